"""One table from many runs: a row per method variant, a column per bit mode (top-1).

Finished runs of one variant are averaged over seeds (mean ± std). Incomplete runs get
rows of their own, marked with their epoch, and never enter a mean. Optional rows: the
difference "quantizable − dedicated" per mode, literature references, and the model's
size (MB) and BOPs per mode.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from ..quant import mode_label
from .collect import RunRecord



def _label_mode(label: str) -> int:
    return 32 if label.upper() in ("FP", "32", "32-BIT") else int(label.split("-")[0])


def _sort_variants(v: str) -> tuple:
    order = ["quantizable", "dedicated"]
    base = v.split(" [")[0]
    return (order.index(base) if base in order else (0 if base.startswith("quantizable") else 3), v)


def build_table(runs: list[RunRecord]) -> tuple[list[int], list[dict]]:
    """Returns (modes high → low, rows). A row: variant, runs, state, cells{mode: (mean, std, n)}."""
    modes = sorted({m for r in runs for m in r.top1}, reverse=True)
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        key = r.variant if r.finished else f"{r.variant} [{r.state}: epoch {r.epoch}/{r.epochs}, seed {r.seed}, {r.path.name}]"
        groups.setdefault(key, []).append(r)
    rows = []
    for variant in sorted(groups, key=_sort_variants):
        members = groups[variant]
        cells = {}
        for m in modes:
            vals = [r.top1[m] for r in members if m in r.top1]
            if vals:
                cells[m] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))
        rows.append({"variant": variant, "runs": len(members), "finished": all(r.finished for r in members),
                     "seeds": sorted({r.seed for r in members}), "cells": cells})
    _add_difference(rows, modes)
    return modes, rows


def _add_difference(rows: list[dict], modes: list[int]) -> None:
    q = next((r for r in rows if r["variant"] == "quantizable"), None)
    d = next((r for r in rows if r["variant"] == "dedicated"), None)
    if q is None or d is None:
        return
    cells = {}
    for m in modes:
        base = d["cells"].get(m)
        if m in q["cells"] and base:
            cells[m] = (q["cells"][m][0] - base[0], None, min(q["cells"][m][2], base[2]))
    rows.append({"variant": "quantizable − dedicated", "runs": "", "finished": True, "seeds": [], "cells": cells,
                 "difference": True})


def load_reference(path: Path) -> list[dict]:
    """reference.csv: columns source, variant, then one column per bit mode label."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        out = []
        for r in reader:
            cells = {}
            for k, v in r.items():
                if k in ("source", "variant", "setting", "note") or v in (None, ""):
                    continue
                cells[_label_mode(k)] = (float(v), None, 1)
            out.append({"variant": f"reference: {r['variant']} ({r['source']})", "runs": "", "finished": True,
                        "seeds": [], "cells": cells, "reference": True})
    return out


def cost_rows(run: RunRecord, modes: list[int]) -> list[dict]:
    """Model size (MB) and BOPs (G) per mode for the run's architecture."""
    from ..cost import model_cost

    info_path = run.path / "data_info.json"
    if not info_path.is_file():
        return []
    info = json.loads(info_path.read_text())
    cost = model_cost(run.config, info["num_classes"], info["in_channels"], info["image_size"], modes)
    return [
        {"variant": "model size (MB)", "runs": "", "finished": True, "seeds": [], "cost": True,
         "cells": {m: (cost[m]["size_mb"], None, 1) for m in modes}},
        {"variant": "BOPs (G)", "runs": "", "finished": True, "seeds": [], "cost": True,
         "cells": {m: (cost[m]["bops"] / 1e9, None, 1) for m in modes}},
    ]


def _fmt(cell, row) -> str:
    if cell is None:
        return "—"
    mean, std, _ = cell
    if row.get("cost"):
        return f"{mean:.3f}" if mean < 10 else f"{mean:.1f}"
    if row.get("difference"):
        return f"{mean:+.2f}"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def to_markdown(modes: list[int], rows: list[dict]) -> str:
    from tabulate import tabulate

    header = ["variant", "runs"] + [mode_label(m) for m in modes]
    body = [[r["variant"], r["runs"]] + [_fmt(r["cells"].get(m), r) for m in modes] for r in rows]
    return tabulate(body, headers=header, tablefmt="github", disable_numparse=True)


def to_csv(modes: list[int], rows: list[dict], path_or_file) -> None:
    """Wide CSV: variant, runs, finished, then <mode> and <mode>_std columns (numbers)."""
    fields = ["variant", "runs", "finished"] + [c for m in modes for c in (mode_label(m), f"{mode_label(m)}_std")]
    close = False
    if isinstance(path_or_file, (str, Path)):
        path_or_file = open(path_or_file, "w", newline="")
        close = True
    try:
        w = csv.DictWriter(path_or_file, fieldnames=fields)
        w.writeheader()
        for r in rows:
            out = {"variant": r["variant"], "runs": r["runs"], "finished": r["finished"]}
            for m in modes:
                c = r["cells"].get(m)
                out[mode_label(m)] = "" if c is None else round(c[0], 4)
                out[f"{mode_label(m)}_std"] = "" if c is None or c[1] is None else round(c[1], 4)
            w.writerow(out)
    finally:
        if close:
            path_or_file.close()


def plot(modes: list[int], rows: list[dict], path: Path, title: str = "") -> None:
    """Top-1 against bit mode, one line per variant (error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(modes)
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    for r in rows:
        if r.get("difference") or r.get("cost"):
            continue
        pts = [(i, r["cells"][m]) for i, m in enumerate(xs) if m in r["cells"]]
        if not pts:
            continue
        style = dict(linestyle="--", alpha=0.6) if r.get("reference") else dict(linestyle="-" if r["finished"] else ":")
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] or 0 for p in pts],
                    marker="o", capsize=3, label=r["variant"], **style)
    ax.set_xticks(range(len(xs)), [mode_label(m) for m in xs])
    ax.set_xlabel("bit mode (weights and activations)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy per bit mode")
    # below the axes so it never hides a line
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
