"""Reports: collect run directories into a DataFrame, group comparable runs, write
markdown / CSV / a plot. ``build_report`` is what ``qdnn report`` and ``reproduce`` call."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..quant import mode_from_label, mode_label, sort_modes
from .collect import _warn, collect, find_runs
from .table import (BUDGET_AXES, INFO, budget_curves, build_table, convergence_table, convergence_text, cost_rows,
                    load_reference, output_format, plot, plot_budget, repeated_seeds, to_csv, to_markdown)
from ..words import count


def reference_names() -> list[str]:
    return sorted(p.parent.name for p in _references_dir().glob("*/reference.csv"))


def _references_dir() -> Path:
    """experiments/ of the source tree, or the copy of its reference tables installed
    with the package (``qdnn_cli/references``): never the current directory."""
    from importlib import resources

    source = Path(__file__).resolve().parents[2] / "experiments"
    if any(source.glob("*/reference.csv")):
        return source
    return Path(str(resources.files("qdnn_cli") / "references"))


def reference_path(reference: str) -> Path:
    """A reference table: a CSV path, or the name of a reproduced table (``cifar100``,
    ``imagenet``), whose ``reference.csv`` ships with qdnn."""
    if Path(reference).suffix == ".csv" and Path(reference).is_file():
        return Path(reference)
    found = _references_dir() / reference / "reference.csv"
    if not found.is_file():
        raise FileNotFoundError(f"no reference table {reference!r}: give a CSV file or one of "
                                f"{', '.join(reference_names())}")
    return found


def build_report(paths: list[Path], fmt: str | None, out: Path | None, plot_path: Path | None,
                 reference: str | None, costs: bool = True, budget_plot: Path | None = None,
                 budget_axis: str = "epochs", convergence: Path | None = None,
                 budget_modes: str | None = None) -> str:
    from ..engine.rundir import atomic_write_text

    fmt = output_format(fmt, out)
    if budget_axis not in BUDGET_AXES:
        raise ValueError(f"--budget-axis {budget_axis!r}: choose {' or '.join(BUDGET_AXES)}")
    # a wrong mode is said before any run is read, like a wrong axis
    curve_modes = [mode_from_label(m) for m in budget_modes.split(",") if m.strip()] if budget_modes else None
    if budget_modes is not None and not curve_modes:
        raise ValueError(f"--budget-modes {budget_modes!r}: name one mode or more, e.g. FP,4,2")
    if curve_modes and not budget_plot:
        raise ValueError("--budget-modes chooses --plot-budget's curves: give --plot-budget PNG too")
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no qdnn runs (folders with config.yaml) under {', '.join(map(str, paths))}")
    long, shared = collect(runs)
    if long.empty:
        raise FileNotFoundError(f"no evaluated epochs yet in the {count(len(runs), 'run')} under {', '.join(map(str, paths))}")
    for variant, budget, seed, where in repeated_seeds(long):
        _warn(f"{variant}, {budget}: seed {seed} ran {len(where)} times ({', '.join(where)}); averaged as one seed")
    modes, table = build_table(long)
    if reference:
        refs = load_reference(reference_path(reference))
        if refs.empty:
            _warn(f"--reference {reference}: {reference_path(reference)} has no rows yet; nothing added")
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
    if budget_plot:
        if curve_modes:
            present = set(long.loc[long["finished"], "mode"])
            missing = [mode_label(m) for m in curve_modes if m not in present]
            if missing:
                raise ValueError(f"--budget-modes: no finished run has {', '.join(missing)} (they have "
                                 f"{', '.join(mode_label(m) for m in sort_modes(list(present), descending=True))})")
        curves = budget_curves(long, curve_modes, axis=budget_axis)
        if not curves:
            raise FileNotFoundError("--plot-budget: no finished runs to draw")
        budget_plot.parent.mkdir(parents=True, exist_ok=True)
        against = "epochs" if budget_axis == "epochs" else "passes per image"
        plot_budget(curves, budget_plot, ", ".join(sorted({r.name for r in runs})) + f": top-1 against {against}",
                    budget_axis)
    if convergence:
        steps = convergence_table(long, budget_axis)
        if steps.empty:
            raise FileNotFoundError("--convergence: no variant has finished runs at two budgets")
        convergence.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(convergence, convergence_text(steps, "csv" if convergence.suffix.lower() == ".csv"
                                                        else "markdown", budget_axis))
        text += ("\nEach budget against the one before (top-1 points gained; a step that doubles the epochs is "
                 "converged when every mode gains < 1):\n\n")
        text += convergence_text(steps, "markdown", budget_axis)
    return text


__all__ = ["build_report", "budget_curves", "collect", "find_runs", "build_table"]
