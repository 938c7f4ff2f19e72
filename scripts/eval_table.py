"""The newest `qdnn eval` CSV of every run under some folders, as one table.

`qdnn eval RUN ...` writes `RUN/eval-<checkpoint>-<time>.csv`; this gathers the newest
one per run (variant = the run folder's name, seed = its parent's `seedN`) into a long
CSV and prints top-1 mean ± std over seeds per variant and mode, with each seed's value.

    python scripts/eval_table.py runs/bn10 --out experiments/cifar100/bn_kinds/recalibrated.csv
"""
import argparse
import re
from pathlib import Path

import pandas as pd


def newest_evals(roots: list[Path]) -> pd.DataFrame:
    frames = []
    for root in roots:
        for run in sorted({p.parent for p in root.rglob("eval-*.csv")}):
            newest = max(run.glob("eval-*.csv"), key=lambda p: p.name)  # the name carries the time
            seed = re.fullmatch(r"seed(\d+)", run.parent.name)
            frame = pd.read_csv(newest)
            frame.insert(0, "seed", int(seed.group(1)) if seed else 0)
            frame.insert(0, "variant", run.name)
            frame["file"] = str(newest)
            frames.append(frame)
    if not frames:
        raise SystemExit(f"no eval-*.csv under {', '.join(map(str, roots))}: run `qdnn eval` first")
    return pd.concat(frames, ignore_index=True)


def summary(long: pd.DataFrame) -> pd.DataFrame:
    long = long[long["mode"].astype(str).str.fullmatch(r"\d+")].copy()  # uniform modes only
    long["mode"] = long["mode"].astype(int)
    rows = []
    for (variant, mode), g in long.groupby(["variant", "mode"]):
        g = g.sort_values("seed")
        rows.append({"variant": variant, "mode": mode, "seeds": len(g), "mean": g["top1"].mean(),
                     "std": g["top1"].std(), "per_seed": " / ".join(f"{v:.2f}" for v in g["top1"])})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="write the long table (one row per run and mode) here")
    args = ap.parse_args()
    long = newest_evals(args.roots)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        long.drop(columns="file").to_csv(args.out, index=False)
    s = summary(long)
    for variant, g in s.groupby("variant"):
        cells = [f"{m}: {r['mean']:.2f} ± {r['std']:.2f} ({r['per_seed']})"
                 for m, r in g.sort_values("mode", ascending=False).set_index("mode").iterrows()]
        print(f"{variant} [{g['seeds'].max()} seeds] " + " | ".join(cells))


if __name__ == "__main__":
    main()
