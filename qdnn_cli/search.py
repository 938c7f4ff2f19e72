"""``qdnn search``: per-layer bit configurations under a cost budget, from a trained
quantizable model alone (no retraining).

Every candidate gives each quantized layer a weight and an activation bit-width from
the modes the model was trained in. A candidate is scored by top-1 on a slice of the
*training split* that the run did not train on (``data.build_holdout``), after its BN
statistics are re-estimated from training batches (slimmable networks' calibration);
the validation split is only used at the end, for the numbers a user reports.

Two strategies (``--strategy``):

* ``sensitivity`` measures, one layer at a time, how much each of its (weight,
  activation) settings moves the model away from the uniform mode the budget allows
  (the reference), treats those damages as additive, and allocates bits by an exact
  multiple-choice knapsack (dynamic programming over the budget); the allocation then
  seeds the evolutionary search below. ``sensitivity.csv`` keeps the measured table.
* ``evolution`` starts from the uniform modes that fit and random configurations
  repaired into the budget.

Both then breed by tournament selection, per-layer crossover and mutation (one step up
or down in the bit list), each child repaired to the budget and filled up to it.
``--candidates`` bounds the configurations evaluated after the sensitivity table;
``--seed`` makes the whole search repeatable.

What a candidate is judged by (``--metric``): ``kl``, the mean KL divergence of its
predictions from the full-precision mode's on the same images, or ``top1`` on the slice.
Top-1 on a few thousand images moves by about a point between two draws of the images,
more than the true differences between good configurations; the KL divergence is a
per-image, label-free difference measured on the same images for every candidate, so
it ranks configurations with far less noise (the winner's curse of picking the best of
many noisy scores is what made earlier top-1 searches lose on ``val/``).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .quant import BitConfig, BitModeError, LayerBits, label_mode, mode_bits, sort_modes
from .quant.mixed import quantized_layers
from .quant.modes import act_bits, weight_bits

BUDGET_KINDS = ("bops", "size_mb")
STRATEGIES = ("sensitivity", "evolution")
METRICS = ("kl", "top1")


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


@dataclass
class Scores:
    top1: float
    top5: float
    kl: float
    hits: torch.Tensor | None = None  # per image: top-1 right (bool), when asked for


def paired_comparison(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two settings' per-image top-1 hits on the same images: the difference in points,
    the images only ``a`` (only ``b``) gets right, and the exact two-sided McNemar p-value
    (a binomial test on those discordant images)."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"delta_top1": 100 * (only_a - only_b) / max(1, a.numel()), "only_searched": only_a,
            "only_uniform": only_b, "p_value": p}


@torch.no_grad()
def reference_logprobs(model, loader, mode) -> list[torch.Tensor]:
    """Log-probabilities of ``mode`` (the full-precision one) on every batch of ``loader``
    (which must yield the same batches in the same order each time)."""
    from .quant.mixed import apply_bits

    model.eval()
    apply_bits(model, mode)
    return [F.log_softmax(model(x).float(), dim=1) for x, _ in loader]


@torch.no_grad()
def score_against(model, loader, setting, reference: list[torch.Tensor], keep_hits: bool = False) -> Scores:
    """Top-1/top-5 % and the mean KL(reference ‖ model) of ``setting`` on ``loader``
    (and which images it gets right, with ``keep_hits``)."""
    from .engine.step import topk_correct
    from .quant.mixed import apply_bits

    model.eval()
    apply_bits(model, setting)
    top1 = top5 = kl = 0.0
    n = 0
    hits = []
    for (x, y), ref in zip(loader, reference, strict=True):
        logp = F.log_softmax(model(x).float(), dim=1)
        t1, t5 = topk_correct(logp, y, 5)
        top1, top5 = top1 + t1.item(), top5 + t5.item()
        kl += F.kl_div(logp, ref, log_target=True, reduction="sum").item()
        n += y.numel()
        if keep_hits:
            hits.append((logp.argmax(1) == y).cpu())
    n = max(n, 1)
    return Scores(100 * top1 / n, 100 * top5 / n, kl / n, torch.cat(hits) if keep_hits else None)


def parse_budget(text: str, kind: str, cost_of_mode) -> float:
    """A mode — ``3-bit`` / ``3`` / ``w2a4``: the cost of every layer at its bits — or a
    number (BOPs may end in K/M/G)."""
    t = str(text).strip()
    if t.lower().endswith("-bit") or t.isdigit() and int(t) <= 32 or t.lower().startswith("w"):
        try:
            return cost_of_mode(label_mode(t))
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


def search_configs(space: Space, score, candidates: int, seed: int, trained: list, on_result=None,
                   metric: str = "top1", start: list[tuple[dict, str]] = ()) -> list[Candidate]:
    """Evaluate up to ``candidates`` searched configurations (plus the uniform modes),
    the ``start`` ones (choice, origin) first."""
    rng = random.Random(seed)
    seen: dict[tuple, Candidate] = {}
    results: list[Candidate] = []

    def evaluate(choice: dict, origin: str) -> Candidate | None:
        key = tuple(choice[n] for n in space.names)
        if key in seen:
            return None
        cfg = space.config(choice)
        cost = space.cost_fn(cfg)
        cand = Candidate(cfg, origin, cost["size_mb"], cost["bops"])
        r = score(cfg)
        cand.top1, cand.top5, cand.kl = r.top1, r.top5, r.kl
        seen[key] = cand
        results.append(cand)
        if on_result is not None:
            on_result(cand)
        return cand

    for b in trained:  # the uniform modes, as reference points (not counted as candidates)
        evaluate(space.uniform(b), f"uniform {b}")
    budgeted = lambda: [c for c in results if not c.origin.startswith("uniform")]  # noqa: E731
    for choice, origin in start:  # as given: the caller's allocation already fits the budget
        if len(budgeted()) < candidates:
            evaluate(choice, origin)
    population = max(4, min(16, candidates // 4))
    attempts = 0
    while len(budgeted()) < min(population, candidates) and attempts < 20 * candidates:
        attempts += 1
        if start:  # the first population: neighbours of the given start, not random draws
            evaluate(space.fill(space.repair(space.mutate(start[0][0], rng), rng), rng), "mutation")
        else:
            evaluate(space.fill(space.repair(space.random(rng), rng), rng), "random")
    while len(budgeted()) < candidates and attempts < 20 * candidates:
        attempts += 1
        pool = [c for c in results if _cost(space, c) <= space.budget]
        parents = [max(rng.sample(pool, min(3, len(pool))), key=lambda c: c.fitness(metric)) for _ in range(2)]
        a, b = (_choice(space, p.config) for p in parents)
        if rng.random() < 0.5:
            child, origin = space.crossover(a, b, rng), "crossover"
        else:
            child, origin = space.mutate(a, rng), "mutation"
        evaluate(space.fill(space.repair(child, rng), rng), origin)
    return results


def _cost(space: Space, c: Candidate) -> float:
    return c.bops if space.kind == "bops" else c.size_mb


def _choice(space: Space, cfg: BitConfig) -> dict:
    return {n: (cfg.bits_of(n).w, cfg.bits_of(n).a) for n in space.names}


def pareto_front(cands: list[Candidate], kind: str) -> list[Candidate]:
    """Candidates no other beats in both top-1 (higher) and cost (lower), cheapest first."""
    cost = (lambda c: c.bops) if kind == "bops" else (lambda c: c.size_mb)
    front, best = [], float("-inf")
    for c in sorted(cands, key=lambda c: (cost(c), -c.top1)):
        if c.top1 > best:
            front.append(c)
            best = c.top1
    return front


def config_text(cfg: BitConfig) -> str:
    """``default=3 layer1.0.conv1=w2a4 ...`` (the default picks the stem's BN)."""
    return " ".join([f"default={cfg.default.label}"] + [f"{n}={lb.label}" for n, lb in cfg.layers])


def write_outputs(out_dir: Path, cands: list[Candidate], space: Space, title: str, metric: str = "top1",
                  sensitivity: list[dict] | None = None) -> Candidate:
    """search.csv, pareto.csv, pareto.png and best.yaml; returns the best candidate in budget."""
    import pandas as pd

    from .engine.rundir import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i, "origin": c.origin, "size_mb": round(c.size_mb, 5), "gbops": round(c.bops / 1e9, 5),
             "top1": round(c.top1, 4), "top5": round(c.top5, 4), "kl": round(c.kl, 6),
             "rerank_top1": round(c.rerank_top1, 4), "rerank_kl": round(c.rerank_kl, 6),
             "within_budget": _cost(space, c) <= space.budget, "config": config_text(c.config)}
            for i, c in enumerate(cands)]
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / "search.csv", table.to_csv(index=False))
    front = pareto_front(cands, space.kind)
    ids = [cands.index(c) for c in front]
    atomic_write_text(out_dir / "pareto.csv", table.loc[ids].to_csv(index=False))
    within = [c for c in cands if _cost(space, c) <= space.budget and not c.origin.startswith("uniform")]
    reranked = [c for c in within if c.rerank_top1 == c.rerank_top1]
    if reranked:  # the finalists' scores on images the search never saw decide
        best = max(reranked, key=lambda c: (c.fitness(metric, rerank=True), c.fitness(metric)))
    else:  # nothing but a uniform mode may fit (a budget at the cheapest mode's cost): that is the answer
        best = max(within or [c for c in cands if _cost(space, c) <= space.budget], key=lambda c: c.fitness(metric))
    if sensitivity:
        atomic_write_text(out_dir / "sensitivity.csv", pd.DataFrame(sensitivity).round(6).to_csv(index=False))
    best.config.save(out_dir / "best.yaml")
    _plot(out_dir / "pareto.png", cands, front, space, title)
    return best


def _plot(path: Path, cands, front, space: Space, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e9, "GBOPs") if space.kind == "bops" else (1.0, "model size (MB)")
    x = lambda c: (c.bops if space.kind == "bops" else c.size_mb) / scale  # noqa: E731
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    searched = [c for c in cands if not c.origin.startswith("uniform")]
    ax.scatter([x(c) for c in searched], [c.top1 for c in searched], s=12, alpha=0.5, label="searched configurations")
    ax.plot([x(c) for c in front], [c.top1 for c in front], "-", color="tab:green", label="Pareto front")
    for c in cands:
        if c.origin.startswith("uniform"):
            ax.scatter([x(c)], [c.top1], marker="s", s=50, color="tab:red")
            ax.annotate(c.origin, (x(c), c.top1), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.axvline(space.budget / scale, linestyle="--", color="gray", label="budget")
    ax.set_xscale("log")
    ax.set_xlabel(unit + " (log scale)")
    ax.set_ylabel("top-1 on the search slice (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_budget(space: Space) -> None:
    cheapest = space.cost(space.cheapest())
    if space.budget < cheapest:
        shown = f"{cheapest / 1e9:.4g} GBOPs" if space.kind == "bops" else f"{cheapest:.4g} MB"
        raise BitModeError(f"the budget is below the cheapest configuration (every layer w{space.w_bits[0]}a"
                           f"{space.a_bits[0]}: {shown})")


def rerank_finalists(cands: list[Candidate], space: Space, score, k: int, metric: str = "top1") -> list[Candidate]:
    """Score the ``k`` best searched configurations within budget, and the uniform modes
    within it, on a second slice: picking the best of many noisy scores on the slice that
    chose them overstates it (winner's curse); fresh images do not."""
    within = [c for c in cands if _cost(space, c) <= space.budget]
    searched = sorted((c for c in within if not c.origin.startswith("uniform")), key=lambda c: -c.fitness(metric))[:k]
    finalists = searched + [c for c in within if c.origin.startswith("uniform")]
    for c in finalists:
        r = score(c.config)
        c.rerank_top1, c.rerank_kl = r.top1, r.kl
    return finalists


def run_search(ckpt: Path, kind: str, budget_text: str, candidates: int, seed: int, calibrate: int,
               search_images: int, device_name: str, out_dir: Path | None, progress=None, overrides=(),
               rerank: int = 0, strategy: str = "sensitivity", metric: str = "kl") -> dict:
    """The whole command: load, search on the held-out slice (re-rank the ``rerank`` best
    on a second one), write files, then evaluate the best configuration and the uniform
    modes on the validation split."""
    from .data import build_data, build_holdout
    from .engine.evaluation import bn_state, calibrate_bn, load_bn_state
    from .loaded_run import load_checkpoint_model, run_costs

    if kind not in BUDGET_KINDS:
        raise ValueError(f"budget kind {kind!r}: choose bops or size_mb")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}: choose {' or '.join(STRATEGIES)}")
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose {' or '.join(METRICS)}")
    if candidates < 1 or calibrate < 1 or search_images < 1 or rerank < 0:
        raise ValueError("--candidates, --calibrate-bn and --search-images must be positive, --rerank >= 0")
    run = load_checkpoint_model(ckpt, set(), list(overrides), device_name)
    model, cfg, trained = run.model, run.cfg, run.trained
    if len(trained) < 2:
        raise BitModeError(f"{ckpt} trained one bit mode ({trained}); a search needs a quantizable model")
    cost_fn = lambda c: run_costs(run, c)  # noqa: E731
    key = "bops" if kind == "bops" else "size_mb"
    budget = parse_budget(budget_text, kind, lambda b: run_costs(run, b)[key])
    space = Space(list(quantized_layers(model)), weight_bits(trained), act_bits(trained), cost_fn, kind, budget)
    check_budget(space)
    t = cfg.trainer
    calib, slice_, rerank_slice, described = build_holdout(cfg.data, int(cfg.seed), int(t.batch_size),
                                                           int(t.eval_batch_size), run.device, search_images,
                                                           search_images if rerank else 0)
    base = bn_state(model)
    teacher = sort_modes(trained)[-1]  # the most precise trained mode: full precision in a qdnn run
    references: dict[int, list] = {}

    def score(config, loader=slice_, keep_hits=False) -> Scores:
        if id(loader) not in references:
            references[id(loader)] = reference_logprobs(model, loader, teacher)
        calibrate_bn(model, calib, config, calibrate)
        r = score_against(model, loader, config, references[id(loader)], keep_hits)
        load_bn_state(model, base)
        return r

    started = time.perf_counter()
    reference = space.best_uniform(trained)
    n_sensitivity = sensitivity_trials(space, reference) if strategy == "sensitivity" else 0
    task = progress.add_task("search", total=n_sensitivity + candidates + len(trained), info="") if progress else None
    n_finalists = 0
    best_seen = [float("-inf")]

    def on_result(c: Candidate) -> None:
        if _cost(space, c) <= space.budget and not c.origin.startswith("uniform"):
            best_seen[0] = max(best_seen[0], c.fitness(metric))
        if progress:
            shown = f"{best_seen[0]:.2f} %" if metric == "top1" else f"KL {-best_seen[0]:.4f}"
            progress.update(task, advance=1, info=f"best in budget {shown}")

    sensitivity, start = None, []
    if strategy == "sensitivity":
        if progress:
            progress.update(task, description="sensitivity", info=f"each layer's settings against {_label(reference)}")

        def damage_of(choice: dict) -> float:
            return score(space.config(choice)).kl

        sensitivity = measure_sensitivity(space, damage_of, reference,
                                          (lambda r: progress.update(task, advance=1)) if progress else None)
        start = [(allocate(space, sensitivity, reference), "sensitivity")]
        if progress:
            progress.update(task, description="search", info="refining the allocation")
    cands = search_configs(space, score, candidates, seed, trained, on_result, metric, start)
    if rerank_slice is not None:
        if progress:
            progress.update(task, description="re-rank", info=f"{rerank} best on a second slice")
        n_finalists = len(rerank_finalists(cands, space, lambda c: score(c, rerank_slice), rerank, metric))
    out_dir = out_dir or ckpt.parent / f"search-{kind}-{budget_text}-{time.strftime('%Y%m%d-%H%M%S')}"
    best = write_outputs(out_dir, cands, space, f"{cfg.name}, {kind} <= {budget_text}: top-1 on "
                         f"{described.split(' ')[0]} held-out training images", metric, sensitivity)
    # the number to report: the validation split, never searched on
    data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), run.device, int(cfg.seed))
    val_ref = references[id(data.val)] = reference_logprobs(model, data.val, teacher)
    searched = score(best.config, data.val, keep_hits=True)
    val = [{"setting": f"searched ({kind} <= {budget_text})", "config": "best.yaml", "bn": f"calibrated {calibrate}",
            **_val(searched), "size_mb": best.size_mb, "gbops": best.bops / 1e9}]
    # the searched configuration against the costliest uniform mode within the budget, image by image
    rival = space.best_uniform_mode(trained)
    versus = {}
    for b in sort_modes(trained, descending=True):
        c = run_costs(run, b)
        val.append({"setting": f"uniform {b}", "config": "", "bn": "trained",
                    **_val(score_against(model, data.val, b, val_ref)), "size_mb": c["size_mb"], "gbops": c["bops"] / 1e9})
        recal = score(BitConfig.uniform(b), data.val, keep_hits=b == rival)
        val.append({"setting": f"uniform {b}", "config": "", "bn": f"calibrated {calibrate}",
                    **_val(recal), "size_mb": c["size_mb"], "gbops": c["bops"] / 1e9})
        if b == rival:
            versus = {"uniform": b, "bn": f"calibrated {calibrate}", **paired_comparison(searched.hits, recal.hits)}
    from .engine.rundir import write_csv

    write_csv(out_dir / "val.csv", [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in val])
    summary = {"checkpoint": str(ckpt), "budget_kind": kind, "budget": budget_text, "budget_value": budget,
               "strategy": strategy, "metric": metric, "candidates": candidates, "seed": seed,
               "calibration_batches": calibrate, "search_slice": described, "reranked": n_finalists,
               "sensitivity_evaluations": len(sensitivity or []), "versus_uniform_on_val": versus,
               "evaluated": len(cands), "seconds": round(time.perf_counter() - started, 1),
               "best": {"config": best.config.to_dict(), "origin": best.origin, "search_top1": best.top1,
                        "search_kl": best.kl,
                        "rerank_top1": None if best.rerank_top1 != best.rerank_top1 else best.rerank_top1,
                        "gbops": best.bops / 1e9, "size_mb": best.size_mb}, "val": val}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["out_dir"] = str(out_dir)
    return summary


def _label(choice: dict) -> str:
    settings = set(choice.values())
    if len(settings) == 1:
        (w, a), = settings
        return LayerBits(w, a).label
    return "a mixed configuration"


def _val(r: Scores) -> dict:
    return {"top1": r.top1, "top5": r.top5, "kl": r.kl}
