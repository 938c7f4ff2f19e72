"""The ``qdnn`` command line. One function per command; flags become config overrides.

Errors the user can fix (config, data, checkpoints, bit modes) print one line and exit 2.
Set QDNN_DEBUG=1 to see the traceback of any error.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantizable DNNs: train one network for many bit-widths, ablate, sweep, evaluate, report.")
# Under torchrun only rank 0 talks; errors still reach stderr from every rank.
console = Console(highlight=False, quiet=int(os.environ.get("RANK", "0")) != 0)
err_console = Console(stderr=True, highlight=False)


def _user_errors() -> tuple:
    from .config import ConfigError
    from .data import DataError
    from .engine import CheckpointError, RunMismatch, TrainingDiverged
    from .quant import BitModeError

    return (ConfigError, DataError, CheckpointError, BitModeError, TrainingDiverged, RunMismatch, ValueError,
            FileNotFoundError)


def fail(message: str, code: int = 2):
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn):
    """Run a command body; user errors become one line and exit 2 (finished work stays)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted: finished epochs are saved; run the same command again to resume")
            raise typer.Exit(130)
        except Exception as e:  # noqa: BLE001 - the one place errors become messages
            if os.environ.get("QDNN_DEBUG"):
                raise
            if isinstance(e, _user_errors()):
                fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                 "(unexpected; QDNN_DEBUG=1 shows the traceback)", code=1)

    return wrapper


def _print_config(cfg) -> None:
    from omegaconf import OmegaConf

    console.rule("config")
    console.print(OmegaConf.to_yaml(cfg, resolve=True).rstrip(), markup=False)
    console.rule()


def print_results(results: dict, title: str, run_dir: Path | None = None) -> None:
    from rich.table import Table

    from .engine import mode_label

    table = Table(title=title)
    for col in ("bit mode", "top-1 %", "top-5 %", "loss"):
        table.add_column(col, justify="right")
    for m in sorted(results, reverse=True):
        r = results[m]
        table.add_row(mode_label(m), f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.4f}")
    console.print(table)
    if run_dir is not None:
        console.print(f"run directory: {run_dir}")


def _latest_run(name: str) -> Path | None:
    base = Path("runs") / name
    runs = sorted(p for p in base.glob("*") if (p / "checkpoint.pt").exists()) if base.is_dir() else []
    return runs[-1] if runs else None


def train_one(experiment: Optional[str], overrides: List[str], quiet_config: bool = False,
              group: Path | None = None, leaf: str | None = None, resume_latest: bool = False) -> tuple[Path, dict]:
    from .config import compose, make_run_dir
    from .engine import run_training

    cfg = compose(experiment, overrides)
    if resume_latest and not cfg.get("out_dir"):
        latest = _latest_run(cfg.name)
        if latest is None:
            raise FileNotFoundError(f"--resume: no run of {cfg.name} with a checkpoint under runs/{cfg.name}/")
        cfg.out_dir = str(latest)
    if not quiet_config:
        _print_config(cfg)
    run_dir = make_run_dir(cfg, group, leaf)
    console.print(f"run directory: {run_dir}")
    results = run_training(cfg, run_dir, overrides, console=console)
    if results:
        print_results(results, f"{cfg.name}: final validation accuracy per bit mode", run_dir)
    return run_dir, results


@app.command()
@guarded
def train(
    experiment: str = typer.Argument(..., help="experiment name (conf/experiment/*.yaml): quickstart, cifar100, cifar10, imagenet"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value, e.g. trainer.epochs=10"),
    resume: bool = typer.Option(False, "--resume", help="continue the latest run of this experiment (or out_dir=)"),
):
    """Train one model (quantizable by default) and write its run directory."""
    train_one(experiment, overrides or [], resume_latest=resume)


ABLATIONS = {
    "full": [],
    "no_consistency": ["loss.consistency=false"],
    "shared_bn": ["quant.bit_specific_bn=false"],
    "no_consistency_shared_bn": ["loss.consistency=false", "quant.bit_specific_bn=false"],
}


def _parse_bits(text: str) -> list[int]:
    from .quant import check_bits

    try:
        bits = [int(b) for b in text.replace(" ", "").split(",") if b]
        for b in bits:
            check_bits(b)
    except ValueError:
        raise ValueError(f"--bits {text!r}: give a comma-separated list of bit modes, each 1-8 or 32") from None
    if not bits:
        raise ValueError("--bits is empty")
    return bits


def _group_dir(experiment: str, overrides: list[str], kind: str) -> Path:
    import time

    from .config import compose

    out = next((o.split("=", 1)[1] for o in overrides if o.startswith("out_dir=")), None)
    if out:
        return Path(out)
    name = compose(experiment, [o for o in overrides if not o.startswith("out_dir=")]).name
    return Path("runs") / name / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_group(experiment: str, variants: dict[str, list[str]], group: Path, overrides: list[str],
              skip_finished: bool = True) -> list[Path]:
    """Train each variant into ``group/<leaf>``; finished runs are skipped, interrupted ones resume.

    Every config is composed and validated before the first run starts, so a typo fails
    at once instead of hours in.
    """
    from .config import compose
    from .report.collect import read_run

    base = [o for o in overrides if not o.startswith("out_dir=")]
    plans = []
    for leaf, extra in variants.items():
        run_overrides = base + extra + [f"out_dir={group / leaf}"]
        compose(experiment, run_overrides)
        plans.append((leaf, run_overrides))
    done = []
    for i, (leaf, run_overrides) in enumerate(plans, 1):
        rec = read_run(group / leaf) if (group / leaf / "config.yaml").exists() else None
        if skip_finished and rec is not None and rec.finished:
            console.print(f"[{i}/{len(plans)}] {leaf}: finished already, skipped ({group / leaf})")
            done.append(group / leaf)
            continue
        console.rule(f"[{i}/{len(plans)}] {leaf}")
        train_one(experiment, run_overrides, quiet_config=True)
        done.append(group / leaf)
    console.print(f"group directory: {group}")
    return done


@app.command()
@guarded
def ablate(
    experiment: str = typer.Argument("cifar100", help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value"),
    no_consistency: bool = typer.Option(False, "--no-consistency", help="train without the consistency loss"),
    no_bit_specific_bn: bool = typer.Option(False, "--no-bit-specific-bn", help="train with one shared BN"),
):
    """Ablations: with a flag, that variant; with none, the grid (full, no consistency, shared BN, both off)."""
    overrides = overrides or []
    if no_consistency or no_bit_specific_bn:
        key = "_".join(k for k, on in (("no_consistency", no_consistency), ("shared_bn", no_bit_specific_bn)) if on)
        variants = {key: ABLATIONS[key]}
    else:
        variants = ABLATIONS
    run_group(experiment, variants, _group_dir(experiment, overrides, "ablate"), overrides)


@app.command("sweep-bits")
@guarded
def sweep_bits(
    experiment: str = typer.Argument("cifar100", help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value"),
    bits: str = typer.Option("2,3,4,8,32", "--bits", help="bit-widths, one dedicated model each"),
):
    """One dedicated ("quantized DNN") model per bit-width, same recipe."""
    overrides = overrides or []
    variants = {f"dedicated_{b}": ["trainer.kind=dedicated", f"quant.bits=[{b}]"] for b in _parse_bits(bits)}
    run_group(experiment, variants, _group_dir(experiment, overrides, "sweep"), overrides)


def _resolve_checkpoint(target: Path, which: str) -> Path:
    if target.is_dir():
        ck = target / ("best.pt" if which == "best" else "checkpoint.pt")
        if not ck.exists():
            raise FileNotFoundError(f"{target} has no {ck.name}: is it a qdnn run directory?")
        return ck
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist")
    return target


@app.command("eval")
@guarded
def eval_cmd(
    target: Path = typer.Argument(..., help="run directory or checkpoint file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides of the run's config, e.g. data.root=..."),
    bits: Optional[str] = typer.Option(None, "--bits", help="bit modes to evaluate (default: the trained ones)"),
    calibrate_bn: int = typer.Option(0, "--calibrate-bn", help="re-estimate BN of untrained modes from N training batches"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best (for a run directory)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
):
    """Evaluate a trained model in any bit modes; untrained modes need --calibrate-bn N."""
    import csv
    import time

    from rich.table import Table

    from .engine.evaluation import evaluate_checkpoint

    ck = _resolve_checkpoint(target, checkpoint)
    parsed = {}
    for o in overrides or []:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not key=value")
        k, v = o.split("=", 1)
        import yaml

        parsed[k] = yaml.safe_load(v)
    rows, meta = evaluate_checkpoint(ck, _parse_bits(bits) if bits else None, calibrate_bn, parsed, device)
    out = ck.parent / f"eval-{ck.stem}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = Table(title=f"{ck} (epoch {meta['epoch']}, trained modes {meta['trained']})")
    for col in ("bit mode", "top-1 %", "top-5 %", "loss", "BN"):
        table.add_column(col, justify="right")
    for r in rows:
        bn = f"calibrated ({r['calibration_batches']} batches)" if r["calibrated"] else "trained"
        table.add_row("FP" if r["mode"] == 32 else f"{r['mode']}-bit", f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                      f"{r['loss']:.4f}", bn)
    console.print(table)
    console.print(f"written: {out}")


def build_report(paths: list[Path], fmt: str, out: Optional[Path], plot_path: Optional[Path],
                 reference: Optional[str], costs: bool = True) -> str:
    from .report.collect import find_runs
    from .report.table import build_table, cost_rows, load_reference, plot, to_csv, to_markdown

    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no qdnn runs (folders with config.yaml) under {', '.join(map(str, paths))}")
    modes, rows = build_table(runs)
    if reference:
        ref = Path(reference)
        if not ref.is_file():
            ref = Path("experiments") / reference / "reference.csv"
        if not ref.is_file():
            raise FileNotFoundError(f"no reference table {reference} (looked for {ref})")
        rows += load_reference(ref)
        modes = sorted(set(modes) | {m for r in rows for m in r["cells"]}, reverse=True)
    if costs:
        quantizable = next((r for r in runs if r.kind == "quantizable"), None) or runs[0]
        rows += cost_rows(quantizable, modes)
    if fmt == "csv":
        import io

        buf = io.StringIO()
        to_csv(modes, rows, buf)
        text = buf.getvalue()
    elif fmt == "markdown":
        text = to_markdown(modes, rows) + "\n"
    else:
        raise ValueError(f"--format {fmt!r}: choose markdown or csv")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    if plot_path:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(modes, rows, plot_path, title=", ".join(sorted({r.name for r in runs})))
    return text


@app.command()
@guarded
def report(
    paths: List[Path] = typer.Argument(..., help="run directories or folders holding them"),
    fmt: str = typer.Option("markdown", "--format", help="markdown or csv"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the table to this file"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="write accuracy-vs-bit-mode plot (PNG)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="add experiments/<NAME>/reference.csv rows"),
    no_costs: bool = typer.Option(False, "--no-costs", help="leave out model size and BOPs rows"),
):
    """One table from many runs: a row per variant, a column per bit mode (top-1 %)."""
    text = build_report(paths, fmt, out, plot_path, reference, not no_costs)
    console.print(text, markup=False, soft_wrap=True)
    for p in (out, plot_path):
        if p:
            console.print(f"written: {p}")


@app.command()
@guarded
def reproduce(
    experiment: str = typer.Argument(..., help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides for every run, e.g. trainer.epochs=5"),
    seeds: int = typer.Option(1, "--seeds", help="number of seeds (0..N-1)"),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where runs go (default runs/<name>/reproduce)"),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="where the report goes (default experiments/<name>)"),
):
    """The whole table: quantizable + one dedicated model per bit + the ablation grid, per seed.

    Finished runs are skipped and interrupted ones resumed, so re-running continues."""
    from .config import compose

    overrides = [o for o in (overrides or []) if not o.startswith(("seed=", "out_dir="))]
    cfg = compose(experiment, overrides)
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    group = runs_dir or Path("runs") / cfg.name / "reproduce"
    variants = dict(ABLATIONS)
    variants.update({f"dedicated_{b}": ["trainer.kind=dedicated", f"quant.bits=[{b}]"] for b in cfg.quant.bits})
    for seed in range(seeds):
        console.rule(f"seed {seed}")
        run_group(experiment, variants, group / f"seed{seed}", overrides + [f"seed={seed}"])
    rdir = report_dir or Path("experiments") / cfg.name
    ref = rdir / "reference.csv"
    text = build_report([group], "markdown", rdir / "results.md", rdir / "results.png",
                        str(ref) if ref.is_file() else None)
    build_report([group], "csv", rdir / "results.csv", None, None)
    console.print(text, markup=False, soft_wrap=True)
    console.print(f"written: {rdir / 'results.md'}, {rdir / 'results.csv'}, {rdir / 'results.png'}")


@app.command("list")
@guarded
def list_cmd():
    """List experiments and models."""
    from .config import experiments
    from .models import MODELS

    console.print("experiments: " + ", ".join(experiments()))
    console.print("models: " + ", ".join(sorted(MODELS)))


def main():
    # Hydra and torch print deprecation chatter through warnings; keep the terminal clean.
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="hydra")
    app()


if __name__ == "__main__":
    sys.exit(main())
