"""One table from the collected runs: a row per variant × budget, a column per bit mode.

Finished runs of one variant and budget are averaged over seeds (mean ± std, the std
only from two seeds on; "seeds" counts them, per mode where the modes differ; runs of
one seed are averaged first, and `qdnn report` warns of them: :func:`repeated_seeds`).
Runs that differ in anything that defines a variant or in budget are never averaged
together. Incomplete runs get rows of their own, marked with state and epoch, and never
enter a mean. Optional rows: "quantizable − dedicated" per budget, literature
references, and the model's size (MB) and BOPs per mode.

The table is a DataFrame: ``variant``, ``budget``, ``seeds``, ``finished``, ``row``
(result / difference / reference / cost) and, per mode, ``<mode>`` (mean) and
``<mode>_std``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from ..quant import mode_from_label, mode_label, sort_modes
from .collect import RunRecord

INFO = ["variant", "budget", "seeds", "finished", "row"]


def _row(variant: str, budget: str, seeds, finished: bool, kind: str, means: dict, stds: dict | None = None) -> dict:
    row = {"variant": variant, "budget": budget, "seeds": seeds, "finished": finished, "row": kind}
    for m, v in means.items():
        row[m] = v
        row[f"{m}_std"] = (stds or {}).get(m)
    return row


def _variant_order(variant: str) -> tuple:
    base = variant.split(": ", 1)[-1]
    return (0 if base == "quantizable" else 1 if base.startswith("quantizable") else 2 if base == "dedicated" else 3,
            variant)


def _seed_counts(counts: dict) -> int | str:
    """The seeds behind a row, ``{mode: count}``: one value when every mode has the same,
    else per mode (dedicated models of one variant and budget, one bit-width each, may have
    run different seeds), so a cell of one seed never reads as a mean of two."""
    values = set(counts.values())
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{mode_label(m)}: {counts[m]}" for m in sort_modes(list(counts), descending=True))


def build_table(long: pd.DataFrame) -> tuple[list, pd.DataFrame]:
    """(modes high → low, table) from :func:`collect.collect`'s long frame."""
    modes = sort_modes(long["mode"].unique().tolist(), descending=True)
    rows = []
    done = long[long["finished"]]
    for (variant, budget), g in done.groupby(["variant", "budget"], sort=False):
        # a seed run more than once counts once (its runs averaged): the spread is over seeds
        per_seed = g.groupby(["seed", "mode"], sort=False)["top1"].mean().reset_index()
        stats = per_seed.groupby("mode", sort=False)["top1"].agg(["mean", "std"])  # ints and wXaY: no sort
        seeds = _seed_counts({m: int(n) for m, n in per_seed.groupby("mode", sort=False)["seed"].nunique().items()})
        rows.append(_row(variant, budget, seeds, True, "result", stats["mean"].to_dict(),
                         stats["std"].dropna().to_dict()))
    for (path, variant, budget), g in long[~long["finished"]].groupby(["path", "variant", "budget"], sort=False):
        first = g.iloc[0]
        label = f"{variant} [{first.state}: epoch {first.epoch}/{first.epochs}, seed {first.seed}, {first.run}]"
        rows.append(_row(label, budget, 1, False, "result", g.set_index("mode")["top1"].to_dict()))
    table = pd.DataFrame(rows, columns=INFO + [c for m in modes for c in (m, f"{m}_std")])
    if len(table):
        order = sorted(range(len(table)), key=lambda i: (_variant_order(table.variant[i]), _budget_order(table.budget[i])))
        table = table.iloc[order].reset_index(drop=True)
    return modes, pd.concat([table, _differences(table, modes)], ignore_index=True)


def repeated_seeds(long: pd.DataFrame) -> list[tuple[str, str, int, list[str]]]:
    """Finished runs that share a variant, budget and seed: ``(variant, budget, seed, paths)``.
    :func:`build_table` averages them as one seed, so they never pass for a spread over
    seeds; but the same seed on two CPUs (or two kernels) differs by rounding alone, and a
    reader should know that a mean holds such repeats."""
    done = long[long["finished"]]
    repeats = {}
    # per mode: a dedicated model per bit-width is one variant of one seed, not a repeat
    for (variant, budget, seed, _), g in done.groupby(["variant", "budget", "seed", "mode"], sort=False):
        paths = sorted(g["path"].unique())
        if len(paths) > 1:
            repeats.setdefault((variant, budget, int(seed)), set()).update(paths)
    return [(*key, sorted(paths)) for key, paths in repeats.items()]


def _budget_order(budget: str) -> tuple:
    """"8 ep" before "16 ep": the numbers in a budget compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(budget)))


def _differences(table: pd.DataFrame, modes: list) -> pd.DataFrame:
    """quantizable − dedicated, per budget (and experiment) where both exist."""
    rows = []
    done = table[table["finished"]]
    for budget, g in done.groupby("budget", sort=False):
        for variant in g["variant"]:
            prefix, base = variant.rsplit(": ", 1) if ": " in variant else ("", variant)
            if base != "quantizable":
                continue
            ded = g[g["variant"] == (f"{prefix}: dedicated" if prefix else "dedicated")]
            if ded.empty:
                continue
            q = g[g["variant"] == variant].iloc[0]
            d = ded.iloc[0]
            diff = {m: q[m] - d[m] for m in modes if pd.notna(q[m]) and pd.notna(d[m])}
            name = f"{prefix + ': ' if prefix else ''}quantizable − dedicated"
            rows.append(_row(name, budget, "", True, "difference", diff))
    return pd.DataFrame(rows)


def load_reference(path: Path) -> pd.DataFrame:
    """reference.csv: columns source, variant, then one column per bit mode label."""
    ref = pd.read_csv(path, dtype=str).fillna("")
    rows = []
    for _, r in ref.iterrows():
        means = {mode_from_label(k): float(v) for k, v in r.items()
                 if k not in ("source", "variant", "setting", "note") and v != ""}
        rows.append(_row(f"reference: {r['variant']} ({r['source']})", r.get("setting", ""), "", True,
                         "reference", means))
    return pd.DataFrame(rows)


def cost_rows(run: RunRecord, modes: list) -> pd.DataFrame:
    """Model size (MB) and BOPs (G) per mode for the run's architecture."""
    from ..cost import model_cost

    info_path = run.path / "data_info.json"
    if not info_path.is_file():
        return pd.DataFrame()
    info = json.loads(info_path.read_text())
    cost = model_cost(run.config, info["num_classes"], info["in_channels"], info["image_size"], modes)
    rows = [_row("model size (MB)", "", "", True, "cost", {m: cost[m]["size_mb"] for m in modes}),
            _row("BOPs (G)", "", "", True, "cost", {m: cost[m]["bops"] / 1e9 for m in modes})]
    return pd.DataFrame(rows + export_rows(run.path / "export" / "export.csv", modes))


# export.csv column -> report row, for a run exported to RUN/export (`qdnn export`)
EXPORT_ROWS = {
    "packed_total_bytes": ("exported, bit-packed weights (KB)", 1 / 1000),
    "onnx_bytes": ("exported ONNX file (KB)", 1 / 1000),
    "latency_b1_ms": ("ONNX Runtime CPU latency, batch 1 (ms)", 1.0),
    "latency_b32_ms": ("ONNX Runtime CPU latency, batch 32 (ms)", 1.0),
}


def export_rows(path: Path, modes: list) -> list[dict]:
    """Size on disk and latency per mode from an export's ``export.csv`` (none without one)."""
    if not path.is_file():
        return []
    try:
        table = pd.read_csv(path)
        by_mode = {mode_from_label(str(r["mode"]).replace("bit", "-bit") if r["mode"] != "fp" else "FP"): r
                   for _, r in table.iterrows() if r["mode"] != "config"}
    except (ValueError, KeyError, pd.errors.ParserError):
        return []
    rows = []
    for column, (label, factor) in EXPORT_ROWS.items():
        if column in table:
            values = {m: float(by_mode[m][column]) * factor for m in modes if m in by_mode and pd.notna(by_mode[m][column])}
            if values:
                rows.append(_row(label, "", "", True, "cost", values))
    return rows


def _fmt(row: pd.Series, m: int) -> str:
    mean = row.get(m)
    if mean is None or pd.isna(mean):
        return "—"
    if row["row"] == "cost":
        return f"{mean:.3f}" if mean < 10 else f"{mean:.1f}"
    if row["row"] == "difference":
        return f"{mean:+.2f}"
    std = row.get(f"{m}_std")
    return f"{mean:.2f} ± {std:.2f}" if std is not None and pd.notna(std) else f"{mean:.2f}"


def to_markdown(modes: list, table: pd.DataFrame) -> str:
    shown = pd.DataFrame({"variant": table["variant"], "budget": table["budget"].fillna(""),
                          "seeds": table["seeds"].fillna("").astype(str)})
    for m in modes:
        shown[mode_label(m)] = [_fmt(r, m) for _, r in table.iterrows()]
    return shown.to_markdown(index=False, tablefmt="github", disable_numparse=True)


def to_csv(modes: list, table: pd.DataFrame) -> str:
    """Wide CSV: variant, budget, seeds, finished, then <mode> and <mode>_std columns (numbers)."""
    out = table[["variant", "budget", "seeds", "finished"]].copy()
    for m in modes:
        out[mode_label(m)] = table[m].round(4)
        out[f"{mode_label(m)}_std"] = table[f"{m}_std"].astype(float).round(4)
    return out.to_csv(index=False)


def plot(modes: list, table: pd.DataFrame, path: Path, title: str = "") -> None:
    """Top-1 against bit mode, one line per variant (error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sort_modes(modes)
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    multi_budget = table.loc[table["row"] == "result", "budget"].nunique() > 1
    for _, r in table[table["row"].isin(["result", "reference"])].iterrows():
        pts = [(i, r[m], r.get(f"{m}_std")) for i, m in enumerate(xs) if pd.notna(r.get(m))]
        if not pts:
            continue
        style = (dict(linestyle="--", alpha=0.6) if r["row"] == "reference"
                 else dict(linestyle="-" if r["finished"] else ":"))
        label = r["variant"] + (f" [{r['budget']}]" if multi_budget and r["row"] == "result" else "")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[0 if pd.isna(p[2]) else p[2] for p in pts],
                    marker="o", capsize=3, label=label, **style)
    ax.set_xticks(range(len(xs)), [mode_label(m) for m in xs])
    _finish(fig, ax, path, "bit mode (weights and activations)", title or "accuracy per bit mode")


def _finish(fig, ax, path: Path, xlabel: str, title: str) -> None:
    """Axis labels, grid, title, the legend below the axes (never hiding a line), saved."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    labels = ax.get_legend_handles_labels()[1]
    # Two columns only while the labels are short: long variant names in two columns run
    # past the figure's sides.
    ncol = 2 if max(map(len, labels), default=0) <= 45 else 1
    # Lay out before the legend exists, so a long legend cannot shrink the axes; "tight"
    # then grows the saved canvas downwards to hold it.
    fig.tight_layout()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol, frameon=False)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


BUDGET_AXES = {"epochs": "training epochs (same data)",
               "passes": "forward/backward passes per training image (epochs x modes per step)"}


def budget_curves(long: pd.DataFrame, modes: list | None = None, axis: str = "epochs") -> dict:
    """Top-1 against training budget: ``{(variant, mode): [(budget, mean, std, seeds), ...]}``
    over finished runs (seeds averaged per budget), for ``modes`` (default: the most and
    the least precise mode present). The budget is ``axis``: the epochs, or the passes over
    each image (equal compute: a quantizable run of 5 modes × 8 epochs is 40, as is a
    dedicated run of 40 epochs). What ``qdnn report --plot-budget`` draws."""
    if axis not in BUDGET_AXES:
        raise ValueError(f"--budget-axis {axis!r}: choose {' or '.join(BUDGET_AXES)}")
    done = long[long["finished"]]
    if done.empty:
        return {}
    present = sort_modes(done["mode"].unique().tolist(), descending=True)
    modes = modes or sorted({present[0], present[-1]}, key=present.index)
    curves = {}
    for (variant, mode), g in done[done["mode"].isin(modes)].groupby(["variant", "mode"], sort=False):
        per_seed = g.groupby([axis, "seed"])["top1"].mean().reset_index()
        points = []
        for budget, h in per_seed.groupby(axis):
            std = float(h["top1"].std()) if len(h) > 1 else float("nan")
            points.append((int(budget), float(h["top1"].mean()), std, int(len(h))))
        curves[(variant, mode)] = sorted(points)
    return curves


def convergence_table(long: pd.DataFrame, axis: str = "epochs", threshold: float = 1.0) -> pd.DataFrame:
    """Each variant's change in top-1 from one budget it ran to the next (on ``axis``),
    per mode (a mode's next budget is the next one it ran): the mean over the seeds that
    ran that mode at both budgets (paired; every seed of each when none is shared).
    Pairing is per mode because one budget's runs may train different modes with
    different seeds (dedicated models, one bit-width each).
    The rule is "go on doubling until the last doubling adds < 1 point in every mode", so
    only a step that at least doubles the schedule (the runs' own epochs, whatever the
    axis: an FP start's passes include its source's) is judged: ``converged`` when no mode
    gained ``threshold`` points or more. A shorter step is listed, unjudged (``converged``
    is None), and where an exact doubling ends at the same budget it is listed too. An
    unpaired step (other seeds at the two budgets) is listed unjudged as well: seeds of
    one variant lie a point or two apart, as much as the threshold. Columns: variant,
    from, to, seeds, paired, epochs_ratio, <mode>..., largest_gain, converged."""
    if axis not in BUDGET_AXES:
        raise ValueError(f"--budget-axis {axis!r}: choose {' or '.join(BUDGET_AXES)}")
    done = long[long["finished"]]
    modes = sort_modes(done["mode"].unique().tolist(), descending=True)
    rows = []
    for variant, g in sorted(done.groupby("variant", sort=False), key=lambda kv: _variant_order(kv[0])):
        per_seed = g.groupby([axis, "seed", "mode"])["top1"].mean()  # a seed run twice counts once
        epochs_at = g.groupby(axis)["epochs"].max()
        # Steps per mode, between the budgets that mode ran: a dedicated 4-bit model run at
        # 128 and 384 epochs has its step though the 2-bit model also ran 256.
        modes_of_step = {}
        for mode in modes:
            budgets = sorted(per_seed[per_seed.index.get_level_values("mode") == mode]
                             .index.get_level_values(axis).unique())
            steps = list(zip(budgets, budgets[1:]))
            for low, high in list(steps):
                if epochs_at[high] < 2 * epochs_at[low]:  # short of a doubling: add the doubling that ends here
                    steps += [(b, high) for b in budgets if b != low and 2 * epochs_at[b] == epochs_at[high]]
            for step in steps:
                modes_of_step.setdefault(step, []).append(mode)
        for low, high in sorted(modes_of_step):
            before, after = per_seed.xs(low, level=axis), per_seed.xs(high, level=axis)
            gain, seeds = {}, {}
            for mode in modes_of_step[(low, high)]:
                b, a = _seed_values(before, mode), _seed_values(after, mode)
                shared = b.index.intersection(a.index)
                if len(shared):
                    b, a = b[shared], a[shared]
                gain[mode] = float(a.mean() - b.mean())
                seeds[mode] = len(shared) or f"{len(b)} → {len(a)}"
            gain = pd.Series(gain)
            ratio = float(epochs_at[high] / epochs_at[low])
            row = {"variant": variant, "from": int(low), "to": int(high), "seeds": _seed_counts(seeds),
                   "paired": all(isinstance(n, int) for n in seeds.values()), "epochs_ratio": ratio}
            row.update({m: float(gain[m]) for m in modes if m in gain})
            row["largest_gain"] = float(gain.max())
            row["converged"] = bool(gain.max() < threshold) if ratio >= 2 and row["paired"] else None
            rows.append(row)
    return pd.DataFrame(rows, columns=["variant", "from", "to", "seeds", "paired", "epochs_ratio", *modes,
                                       "largest_gain", "converged"])


def _seed_values(per_seed: pd.Series, mode) -> pd.Series:
    """One budget's top-1 of ``mode`` indexed by seed (empty when no run trained it)."""
    values = per_seed[per_seed.index.get_level_values("mode") == mode]
    return pd.Series(values.to_numpy(), index=values.index.get_level_values("seed"))


def convergence_text(table: pd.DataFrame, fmt: str, axis: str = "epochs") -> str:
    """:func:`convergence_table` as CSV (numbers) or markdown (signed points)."""
    modes = [c for c in table.columns if c not in ("variant", "from", "to", "seeds", "paired", "epochs_ratio",
                                                   "largest_gain", "converged")]
    if fmt == "csv":
        out = table.rename(columns={m: mode_label(m) for m in modes})
        return out.round(4).to_csv(index=False)
    unit = "ep" if axis == "epochs" else "passes"
    shown = pd.DataFrame({"variant": table["variant"],
                          "budgets": [f"{a} → {b} {unit}" for a, b in zip(table["from"], table["to"])],
                          "seeds": [f"{s}" + ("" if p else " (unpaired)") for s, p in zip(table["seeds"], table["paired"])]})
    for m in modes:
        shown[mode_label(m)] = [f"{v:+.2f}" if pd.notna(v) else "—" for v in table[m]]
    shown["converged"] = [("yes" if c else "no") if pd.notna(c) else f"— (epochs ×{r:.3g}: not a doubling)"
                          if r < 2 else "— (unpaired: other seeds)"
                          for c, r in zip(table["converged"], table["epochs_ratio"])]
    return shown.to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


def budget_curve_styles(keys: list[tuple[str, int]]) -> dict:
    """Matplotlib styles for the (variant, mode) curves of :func:`plot_budget`: one colour
    per variant (its modes share it, so a variant's pair reads as one), one marker per mode
    across the whole picture (a filled circle for the most precise mode drawn, a triangle for
    the next, then square, diamond...), solid lines for quantizable models and dashed for
    dedicated ones. A variant that ran only the 2-bit mode so gets the 2-bit marker, not the
    circle that means FP everywhere else. Up to 20 variants get 20 different colours
    (matplotlib's default cycle repeats after 10, which made two variants look like one)."""
    from matplotlib import colormaps

    variants = list(dict.fromkeys(v for v, _ in keys))
    palette = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    modes = sort_modes(list(dict.fromkeys(m for _, m in keys)), descending=True)
    markers = "ovsD^PX*<>"
    return {(v, m): {"color": palette(variants.index(v) % palette.N), "marker": markers[modes.index(m) % len(markers)],
                     "linestyle": "-" if v.split(": ")[-1].startswith("quantizable") else "--"} for v, m in keys}


def seed_count_marks(points: list) -> list[tuple[int, float, str]]:
    """The ``(budget, mean, "n=<seeds>")`` marks for one curve of :func:`budget_curves`
    whose points average different numbers of seeds, none when every point has the same.
    A curve that joins a one-seed mean to a two-seed mean bends where the seed set
    changes, not only where training did; the marks say which points those are."""
    if len({p[3] for p in points}) <= 1:
        return []
    return [(p[0], p[1], f"n={p[3]}") for p in points]


def plot_budget(curves: dict, path: Path, title: str = "", axis: str = "epochs") -> list[tuple[int, float, str]]:
    """One line per variant and mode: top-1 against the budget (log axis), error bars = std
    over seeds; beside each point of a curve whose seed count varies, that count
    (:func:`seed_count_marks`). Returns the marks drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    styles = budget_curve_styles(list(curves))
    drawn = []
    for (variant, mode), points in curves.items():
        xs, ys, es = zip(*[(p[0], p[1], 0 if p[2] != p[2] else p[2]) for p in points])
        style = styles[(variant, mode)]
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=f"{variant}, {mode_label(mode)}", **style)
        for x, y, text in seed_count_marks(points):
            ax.annotate(text, (x, y), xytext=(4, -9), textcoords="offset points", fontsize=6, color=style["color"])
            drawn.append((x, y, text))
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for points in curves.values() for p in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    _finish(fig, ax, path, BUDGET_AXES[axis], title or "accuracy against training budget")
    return drawn


def output_format(fmt: str | None, out) -> str:
    """--format as given, else what --out's name says (.csv: csv), else markdown; refuses others."""
    if fmt is None:
        fmt = "csv" if out is not None and str(out).lower().endswith(".csv") else "markdown"
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"--format {fmt!r}: choose markdown or csv")
    return fmt
