"""``qdnn compare``: one variant against another, mode by mode, seed against seed.

The claims a reproduction states are differences ("the 2-bit mode leads the dedicated
2-bit model by 1.40: +1.84 / +0.96 per seed"). This computes them from the run files, so
each such figure can name the command that made it. Each side is the finished runs of one
variant at one budget; seeds both sides ran are paired, and the difference is the mean of
the per-seed differences. Where both sides were also evaluated on their training images
(``qdnn eval RUN --split train``), the train/val gaps are compared the same way.
"""
from __future__ import annotations

import csv
import glob
from pathlib import Path

import pandas as pd

from ..quant import mode_label, parse_mode, sort_modes
from .collect import DamagedRun, _warn, collect, find_runs
from .table import output_format

SIDES = ("left", "right")


def expand(spec: str) -> list[Path]:
    """A run directory, a folder holding runs, or a quoted glob pattern (``'raw/*_seed*_full'``)."""
    if Path(spec).exists():
        return [Path(spec)]
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"{spec}: nothing matches this pattern")
        return found
    raise FileNotFoundError(f"{spec} does not exist")


def train_top1(run_path: Path) -> dict:
    """Top-1 per mode on the run's training images (evaluation mode), from its latest
    ``qdnn eval --split train`` file; modes with re-estimated (calibrated) BN are left out."""
    files = sorted(run_path.glob("eval-*.csv"), key=lambda p: p.stat().st_mtime_ns)
    for path in reversed(files):  # the latest evaluation on the training split wins
        try:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("split") == "train"]
            found = {parse_mode(r["mode"]): float(r["top1"]) for r in rows if r.get("calibrated") != "True"}
        except (KeyError, ValueError, csv.Error) as e:
            raise DamagedRun(f"{path}: cannot be read ({e})") from None
        if found:
            return found
    return {}


def _side(long: pd.DataFrame, paths: set[str], spec: str) -> pd.DataFrame:
    rows = long[long["path"].isin(paths)]
    unfinished = sorted(set(rows.loc[~rows["finished"], "path"]))
    if unfinished:
        _warn(f"{spec}: left out {len(unfinished)} unfinished run(s) ({', '.join(Path(p).name for p in unfinished)})")
    rows = rows[rows["finished"]]
    if rows.empty:
        raise FileNotFoundError(f"{spec}: no finished qdnn runs there")
    groups = rows.groupby(["variant", "budget"]).size().index.tolist()
    if len(groups) > 1:
        listed = "; ".join(f"{v} ({b})" for v, b in groups)
        raise ValueError(f"{spec} holds {len(groups)} variants or budgets ({listed}): give one side one of them")
    repeated = rows.groupby(["seed", "mode"])["path"].nunique()
    if (repeated > 1).any():
        seed, mode = repeated[repeated > 1].index[0]
        raise ValueError(f"{spec}: seed {seed} ran {mode_label(mode)} more than once; give one side one run per seed")
    return rows


def compare(left: str, right: str) -> tuple[pd.DataFrame, dict]:
    """Per mode both sides ran: each side's mean top-1 over the seeds compared, the mean
    of the per-seed differences (left − right), the per-seed differences, and the same for
    the train/val gaps where both sides have training-image evaluations. With no seed in
    common the means are of every seed on each side, and the row says "unpaired"."""
    paths = {side: expand(spec) for side, spec in zip(SIDES, (left, right))}
    runs = {side: find_runs(p) for side, p in paths.items()}
    for side, spec in zip(SIDES, (left, right)):
        if not runs[side]:
            raise FileNotFoundError(f"{spec}: no qdnn runs (folders with config.yaml) there")
    overlap = {r.path for r in runs["left"]} & {r.path for r in runs["right"]}
    if overlap:
        raise ValueError(f"both sides hold {sorted(overlap)[0]}: give each run to one side")
    long, _ = collect(runs["left"] + runs["right"])
    sides = {side: _side(long, {str(r.path) for r in runs[side]}, spec)
             for side, spec in zip(SIDES, (left, right))}
    train = {side: {(r.seed, m): t for r in runs[side] for m, t in train_top1(r.path).items()} for side in SIDES}
    modes = sort_modes(set(sides["left"]["mode"]) & set(sides["right"]["mode"]), descending=True)
    if not modes:
        have = {s: ", ".join(mode_label(m) for m in sort_modes(set(sides[s]["mode"]), descending=True)) for s in SIDES}
        raise ValueError(f"the sides share no bit mode (left: {have['left']}; right: {have['right']})")
    rows = []
    for mode in modes:
        val = {s: sides[s][sides[s]["mode"] == mode].set_index("seed")["top1"] for s in SIDES}
        common = sorted(set(val["left"].index) & set(val["right"].index))
        paired = bool(common)
        seeds = {s: common if paired else sorted(val[s].index) for s in SIDES}
        mean = {s: float(val[s].loc[seeds[s]].mean()) for s in SIDES}
        per_seed = [float(val["left"][k] - val["right"][k]) for k in common]
        row = {"mode": mode_label(mode), "left": mean["left"], "right": mean["right"],
               "difference": float(sum(per_seed) / len(per_seed)) if paired else mean["left"] - mean["right"],
               "per_seed": per_seed, "seeds": common if paired else None,
               "left_seeds": seeds["left"], "right_seeds": seeds["right"]}
        gaps = {s: [train[s][(k, mode)] - float(val[s][k]) for k in seeds[s] if (k, mode) in train[s]] for s in SIDES}
        if all(len(gaps[s]) == len(seeds[s]) for s in SIDES):  # every compared seed evaluated on its training images
            row["left_gap"] = sum(gaps["left"]) / len(gaps["left"])
            row["right_gap"] = sum(gaps["right"]) / len(gaps["right"])
            row["gap_difference"] = row["left_gap"] - row["right_gap"]
        rows.append(row)
    about = {}
    for side, spec in zip(SIDES, (left, right)):
        first = sides[side].iloc[0]
        about[side] = {"spec": spec, "variant": first["variant"], "budget": first["budget"],
                       "passes": int(first["passes"]), "seeds": sorted(set(sides[side]["seed"]))}
    return pd.DataFrame(rows), about


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def to_csv(table: pd.DataFrame) -> str:
    out = table.copy()
    out["per_seed"] = [" ".join(_signed(d) for d in ds) for ds in out["per_seed"]]
    for col in ("seeds", "left_seeds", "right_seeds"):
        out[col] = [" ".join(map(str, s)) if s is not None else "" for s in out[col]]
    return out.round(4).to_csv(index=False)


def to_markdown(table: pd.DataFrame, about: dict) -> str:
    lines = [f"left: {about['left']['variant']}, {about['left']['budget']} ({about['left']['passes']} passes per "
             f"image), seeds {', '.join(map(str, about['left']['seeds']))} — {about['left']['spec']}",
             f"right: {about['right']['variant']}, {about['right']['budget']} ({about['right']['passes']} passes per "
             f"image), seeds {', '.join(map(str, about['right']['seeds']))} — {about['right']['spec']}", ""]
    with_gaps = "gap_difference" in table and table["gap_difference"].notna().any()
    header = ["mode", "left", "right", "left − right", "per seed", "seeds"]
    if with_gaps:
        header += ["gap (train − val): left", "gap: right", "gap: left − right"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, r in table.iterrows():
        if r["seeds"] is not None:
            per_seed, seeds = " / ".join(_signed(d) for d in r["per_seed"]), " / ".join(map(str, r["seeds"]))
        else:
            per_seed = "unpaired"
            seeds = f"{','.join(map(str, r['left_seeds']))} against {','.join(map(str, r['right_seeds']))}"
        cells = [r["mode"], f"{r['left']:.2f}", f"{r['right']:.2f}", f"**{_signed(r['difference'])}**", per_seed, seeds]
        if with_gaps:
            has = pd.notna(r.get("gap_difference"))
            cells += [f"{r['left_gap']:.2f}", f"{r['right_gap']:.2f}", _signed(r["gap_difference"])] if has else ["—"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_comparison(left: str, right: str, fmt: str | None, out: Path | None) -> str:
    from ..engine.rundir import atomic_write_text

    fmt = output_format(fmt, out)
    table, about = compare(left, right)
    text = to_csv(table) if fmt == "csv" else to_markdown(table, about)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return text
