"""The sensitivity strategy: each layer's damage per setting, measured one layer at a time, then bits allocated by an exact multiple-choice knapsack."""
from __future__ import annotations

import math

from .space import Space


def _sensitivity_trials(space: Space, reference: dict):
    """(layer, "weight" | "act", (w, a)) for every other weight bit-width of each layer,
    and apart every other activation bit-width, that the budget allows."""
    for n in space.names:
        w0, a0 = reference[n]
        options = set(space.options(n))
        trials = [("weight", (w, a0)) for w in space.w_bits if w != w0] + \
                 [("act", (w0, a)) for a in space.a_bits if a != a0]
        yield from ((n, part, wa) for part, wa in trials if wa in options)


def measure_sensitivity(space: Space, damage_of, reference: dict, on_result=None) -> list[dict]:
    """How much (``damage_of``: lower is better, e.g. KL to full precision) each layer's
    weight bits, and apart from them its activation bits, move the model from
    ``reference``: one row per layer and per other weight (activation) bit-width, the rest
    of the configuration as in the reference. Weight and activation damages are measured
    apart and added (:func:`allocate`): with five weight and five activation widths that
    is 8 measurements a layer instead of 24 for every pair, and a pair's cost stays exact."""
    base = damage_of(reference)
    cost0 = space.cost(reference)
    rows = []
    for n, part, wa in _sensitivity_trials(space, reference):
        trial = {**reference, n: wa}
        d = damage_of(trial)
        rows.append({"layer": n, "part": part, "w": wa[0], "a": wa[1], "delta_cost": space.cost(trial) - cost0,
                     "damage": d, "delta_damage": d - base})
        if on_result is not None:
            on_result(rows[-1])
    return rows


def sensitivity_trials(space: Space, reference: dict) -> int:
    """How many measurements :func:`measure_sensitivity` makes."""
    return sum(1 for _ in _sensitivity_trials(space, reference))


def allocate(space: Space, table: list[dict], reference: dict, resolution: int = 2000) -> dict:
    """The configuration that minimises the summed damages of ``table`` within the budget.
    A layer's setting (w, a) is charged the damage of its weight bits plus that of its
    activation bits (each relative to ``reference``; a width never measured is not
    offered). Exact multiple-choice knapsack over the budget cut into ``resolution``
    steps, each layer's cost rounded *up*, so the answer always fits."""
    cheap = space.cheapest()
    floor = space.cost(cheap)
    slack = space.budget - floor
    step = max(slack, 1e-12) / resolution
    part_damage = {(r["layer"], r["part"], r["w"] if r["part"] == "weight" else r["a"]): r["delta_damage"]
                   for r in table}
    best = [0.0] + [math.inf] * resolution  # best[c]: least damage spending exactly c steps so far
    picks: list[list] = []
    for n in space.names:
        w0, a0 = reference[n]
        opts = []
        for w, a in space.options(n):
            dw = 0.0 if w == w0 else part_damage.get((n, "weight", w))
            da = 0.0 if a == a0 else part_damage.get((n, "act", a))
            if dw is None or da is None:
                continue
            units = math.ceil((space.cost({**cheap, n: (w, a)}) - floor) / step - 1e-9)
            if units <= resolution:
                opts.append((units, dw + da, (w, a)))
        new = [math.inf] * (resolution + 1)
        pick = [None] * (resolution + 1)
        for c, v in enumerate(best):
            if v == math.inf:
                continue
            for units, d, wa in opts:
                if c + units <= resolution and v + d < new[c + units]:
                    new[c + units], pick[c + units] = v + d, (c, wa)
        best = new
        picks.append(pick)
    c = min(range(resolution + 1), key=lambda i: best[i])
    if best[c] == math.inf:
        return dict(reference)
    choice = {}
    for n, pick in zip(reversed(space.names), reversed(picks)):
        c, wa = pick[c]
        choice[n] = wa
    return choice
