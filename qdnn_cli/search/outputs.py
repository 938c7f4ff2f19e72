"""The files a search writes: search.csv, sensitivity.csv, pareto.csv/png, best.yaml."""
from __future__ import annotations

from pathlib import Path

from .space import Candidate, Space, _cost, config_text


def pareto_front(cands: list[Candidate], kind: str) -> list[Candidate]:
    """Candidates no other beats in both top-1 (higher) and cost (lower), cheapest first."""
    cost = (lambda c: c.bops) if kind == "bops" else (lambda c: c.size_mb)
    front, best = [], float("-inf")
    for c in sorted(cands, key=lambda c: (cost(c), -c.top1)):
        if c.top1 > best:
            front.append(c)
            best = c.top1
    return front


def write_outputs(out_dir: Path, cands: list[Candidate], space: Space, title: str, metric: str = "top1",
                  sensitivity: list[dict] | None = None) -> Candidate:
    """search.csv, pareto.csv, pareto.png and best.yaml; returns the best candidate in budget."""
    import pandas as pd

    from ..engine.rundir import atomic_write_text

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
