"""The search space: per-layer (weight, activation) bits from the trained modes, costs, the budget, candidates."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..quant import BitConfig, BitModeError, LayerBits, mode_from_label, mode_bits, sort_modes


BUDGET_KINDS = ("bops", "size_mb")


@dataclass
class Candidate:
    config: BitConfig
    origin: str
    size_mb: float
    bops: float
    top1: float = float("nan")
    top5: float = float("nan")
    kl: float = float("nan")           # mean KL(full precision ‖ candidate) per image, nats
    rerank_top1: float = float("nan")  # on the second held-out slice (finalists only)
    rerank_kl: float = float("nan")

    def fitness(self, metric: str, rerank: bool = False) -> float:
        """Higher is better: top-1, or minus the KL divergence."""
        if metric == "top1":
            return self.rerank_top1 if rerank else self.top1
        return -(self.rerank_kl if rerank else self.kl)


def parse_budget(text: str, kind: str, cost_of_mode) -> float:
    """A mode — ``3-bit`` / ``3`` / ``w2a4``: the cost of every layer at its bits — or a
    number (BOPs may end in K/M/G)."""
    t = str(text).strip()
    if t.lower().endswith("-bit") or t.isdigit() and int(t) <= 32 or t.lower().startswith("w"):
        try:
            return cost_of_mode(mode_from_label(t))
        except BitModeError:
            pass
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:].lower(), 1.0) if kind == "bops" else 1.0
    try:
        return float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise ValueError(f"budget {text!r}: give a number{' (K/M/G allowed)' if kind == 'bops' else ''} "
                         "or a mode such as 3-bit or w2a4") from None


class Space:
    """The configurations of one model: layers × (weight, activation) bits, and their cost.
    A choice maps each layer name to ``(w, a)``; weight bits come from the weight bits of
    the trained modes, activation bits from theirs."""

    def __init__(self, layer_names: list[str], w_bits: list[int], a_bits: list[int], cost_fn, kind: str,
                 budget: float):
        self.names, self.cost_fn, self.kind, self.budget = layer_names, cost_fn, kind, budget
        self.w_bits, self.a_bits = sorted(w_bits), sorted(a_bits)

    def config(self, choice: dict[str, tuple[int, int]]) -> BitConfig:
        """Every layer named; the default (which only picks the BN after the full-precision
        stem) is the setting most layers have, ties to the cheaper: a uniform choice is then
        exactly that uniform mode. (A fixed lowest-bits default gave every candidate the
        stem BN of the cheapest mode, costing even the full-precision one 0.15 nats of KL.)"""
        counts: dict[tuple[int, int], int] = {}
        for wa in choice.values():
            counts[wa] = counts.get(wa, 0) + 1
        default = max(counts, key=lambda wa: (counts[wa], -wa[0] * wa[1], -wa[0])) if counts else \
            (self.w_bits[0], self.a_bits[0])
        return BitConfig(LayerBits(*default), tuple(sorted((n, LayerBits(*wa)) for n, wa in choice.items())))

    def cost(self, choice: dict) -> float:
        c = self.cost_fn(self.config(choice))
        return c["bops"] if self.kind == "bops" else c["size_mb"]

    def uniform(self, mode) -> dict:
        return {n: mode_bits(mode) for n in self.names}

    def cheapest(self) -> dict:
        return {n: (self.w_bits[0], self.a_bits[0]) for n in self.names}

    @staticmethod
    def _step(bits: list[int], b: int, d: int) -> int:
        i = bits.index(b) + d
        return bits[min(max(i, 0), len(bits) - 1)]

    def _move(self, wa: tuple[int, int], d: int, rng: random.Random) -> tuple[int, int]:
        """One step down (d=-1) or up (d=+1) in weight or activation bits, whichever can
        move; when both can, the larger one goes down (the smaller one up), a tie by coin."""
        w, a = wa
        w2, a2 = self._step(self.w_bits, w, d), self._step(self.a_bits, a, d)
        if w2 == w:
            return w, a2
        if a2 == a:
            return w2, a
        if w == a:
            return (w2, a) if rng.random() < 0.5 else (w, a2)
        return (w2, a) if (w > a) == (d < 0) else (w, a2)

    def repair(self, choice: dict, rng: random.Random) -> dict:
        """Lower random layers' bits until the configuration fits the budget."""
        choice = dict(choice)
        while self.cost(choice) > self.budget:
            lowerable = [n for n in self.names if choice[n] != (self.w_bits[0], self.a_bits[0])]
            n = rng.choice(lowerable)
            choice[n] = self._move(choice[n], -1, rng)
        return choice

    def fill(self, choice: dict, rng: random.Random, tries: int = 40) -> dict:
        """Raise random layers' bits while the budget allows."""
        choice = dict(choice)
        for _ in range(tries):
            n = rng.choice(self.names)
            up = self._move(choice[n], 1, rng)
            trial = {**choice, n: up}
            if up != choice[n] and self.cost(trial) <= self.budget:
                choice = trial
        return choice

    def options(self, name: str) -> list[tuple[int, int]]:
        """The (w, a) settings one layer can take with every other layer at its cheapest
        and the budget still met."""
        cheap = self.cheapest()
        return [(w, a) for w in self.w_bits for a in self.a_bits if self.cost({**cheap, name: (w, a)}) <= self.budget]

    def best_uniform_mode(self, trained):
        """The most expensive uniform trained mode within budget, or None."""
        fits = [b for b in sort_modes(trained) if self.cost(self.uniform(b)) <= self.budget]
        return fits[-1] if fits else None

    def best_uniform(self, trained) -> dict:
        """That mode as a choice (the cheapest configuration when no mode fits)."""
        mode = self.best_uniform_mode(trained)
        return self.cheapest() if mode is None else self.uniform(mode)

    def random(self, rng: random.Random) -> dict:
        return {n: (rng.choice(self.w_bits), rng.choice(self.a_bits)) for n in self.names}

    def mutate(self, choice: dict, rng: random.Random) -> dict:
        out = dict(choice)
        for n in rng.sample(self.names, max(1, len(self.names) // 8)):
            w, a = out[n]
            d = rng.choice((-1, 1))
            out[n] = (self._step(self.w_bits, w, d), a) if rng.random() < 0.5 else (w, self._step(self.a_bits, a, d))
        return out

    def crossover(self, a: dict, b: dict, rng: random.Random) -> dict:
        return {n: (a if rng.random() < 0.5 else b)[n] for n in self.names}


def _cost(space: Space, c: Candidate) -> float:
    return c.bops if space.kind == "bops" else c.size_mb


def _choice(space: Space, cfg: BitConfig) -> dict:
    return {n: (cfg.bits_of(n).w, cfg.bits_of(n).a) for n in space.names}


def config_text(cfg: BitConfig) -> str:
    """``default=3 layer1.0.conv1=w2a4 ...`` (the default picks the stem's BN)."""
    return " ".join([f"default={cfg.default.label}"] + [f"{n}={lb.label}" for n, lb in cfg.layers])


def check_budget(space: Space) -> None:
    cheapest = space.cost(space.cheapest())
    if space.budget < cheapest:
        shown = f"{cheapest / 1e9:.4g} GBOPs" if space.kind == "bops" else f"{cheapest:.4g} MB"
        raise BitModeError(f"the budget is below the cheapest configuration (every layer w{space.w_bits[0]}a"
                           f"{space.a_bits[0]}: {shown})")


def _label(choice: dict) -> str:
    settings = set(choice.values())
    if len(settings) == 1:
        (w, a), = settings
        return LayerBits(w, a).label
    return "a mixed configuration"
