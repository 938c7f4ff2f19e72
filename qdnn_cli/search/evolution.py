"""The evolutionary search (tournament, per-layer crossover, mutation, repair to the budget) and the re-ranking of its finalists on a second slice."""
from __future__ import annotations

import random

from .space import Candidate, Space, _choice, _cost


STRATEGIES = ("sensitivity", "evolution")


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
