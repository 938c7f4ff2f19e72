"""Reports: collect run directories into a DataFrame, group comparable runs, write
markdown / CSV / a plot. ``build_report`` is what ``qdnn report`` and ``reproduce`` call."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..quant import sort_modes
from .collect import collect, find_runs
from .table import INFO, build_table, cost_rows, load_reference, plot, to_csv, to_markdown


def build_report(paths: list[Path], fmt: str, out: Path | None, plot_path: Path | None,
                 reference: str | None, costs: bool = True) -> str:
    from ..engine.rundir import atomic_write_text

    if fmt not in ("markdown", "csv"):
        raise ValueError(f"--format {fmt!r}: choose markdown or csv")
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no qdnn runs (folders with config.yaml) under {', '.join(map(str, paths))}")
    long, shared = collect(runs)
    if long.empty:
        raise FileNotFoundError(f"no evaluated epochs yet in the {len(runs)} runs under {', '.join(map(str, paths))}")
    modes, table = build_table(long)
    if reference:
        ref = Path(reference)
        if not ref.is_file():
            ref = Path("experiments") / reference / "reference.csv"
        if not ref.is_file():
            raise FileNotFoundError(f"no reference table {reference} (looked for {ref})")
        refs = load_reference(ref)
        ref_modes = {c for c in refs.columns if c not in INFO and not str(c).endswith("_std")}
        modes = sort_modes(set(modes) | ref_modes, descending=True)
        table = pd.concat([table, refs], ignore_index=True)
    if costs:
        quantizable = next((r for r in runs if r.kind == "quantizable"), None) or runs[0]
        table = pd.concat([table, cost_rows(quantizable, modes)], ignore_index=True)
    for m in modes:  # every mode has its two columns, even if only a reference row filled them
        for col in (m, f"{m}_std"):
            if col not in table:
                table[col] = None
    if fmt == "csv":
        text = to_csv(modes, table)
    else:
        note = f"All runs: {', '.join(shared)}.\n\n" if shared else ""
        text = note + to_markdown(modes, table) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    if plot_path:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(modes, table, plot_path, title=", ".join(sorted({r.name for r in runs})))
    return text


__all__ = ["build_report", "collect", "find_runs", "build_table"]
