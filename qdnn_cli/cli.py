"""The ``qdnn`` command line: one function per command; flags become overrides or arguments
of :mod:`qdnn_cli.commands`, which does the work.

Errors the user can fix (config, data, checkpoints, bit modes) print one line and exit 2;
anything else is a short line and exit 1, its traceback in the run directory's
``error.log`` where there is one. QDNN_DEBUG=1 shows every traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .commands import console, err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown",
                  help="Quantizable DNNs: train one network for many bit-widths, ablate, sweep, evaluate, report.")


def fail(message: str, code: int = 2):
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)  # a message's [brackets] are text
    raise typer.Exit(code)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def guarded(fn):
    """Run a command body; user errors become one line and exit 2 (finished work stays)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import is_input_error
        from .startup import StopRequested, take_held_signal

        held = take_held_signal()
        if held is not None:  # a stop signal while qdnn was starting: nothing was done yet
            err_console.print(f"stopped: signal {held} came before the command started; nothing was written; "
                              "run the same command again")
            from .engine.interrupt import RESUMABLE_EXIT

            raise typer.Exit(RESUMABLE_EXIT)
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted: finished epochs are saved; run the same command again to resume")
            raise typer.Exit(130)
        except StopRequested as e:  # a command that cleaned up after itself (an export)
            err_console.print(f"stopped by signal {e.signum}: nothing half-written was left; what had finished stays")
            raise typer.Exit(128 + e.signum)
        except Exception as e:  # noqa: BLE001 - the one place errors become messages
            from .engine import RESUMABLE_EXIT, RunInterrupted

            if isinstance(e, RunInterrupted):  # stopped on a signal: resumable, not an error
                err_console.print(f"stopped: {e}")
                raise typer.Exit(RESUMABLE_EXIT)
            if os.environ.get("QDNN_DEBUG"):
                raise
            if is_input_error(e):
                fail(_first_line(e))
            from .launch import LaunchError

            if isinstance(e, LaunchError):  # runs of a group failed: each says why; the others finished
                fail(_first_line(e), code=1)
            where = f"traceback in {e.log_path}" if getattr(e, "log_path", None) else "QDNN_DEBUG=1 shows the traceback"
            fail(f"{type(e).__name__}: {_first_line(e)} (unexpected; {where})", code=1)

    return wrapper


# the launcher flags, defined once: every command that runs a group of runs takes them
# (``@with_launcher``) and receives them as one LaunchOptions, ``launcher``
LAUNCHER_FLAGS = [
    ("launcher_name", str, typer.Option("local", "--launcher", help="local (one after another), parallel (--jobs "
                                        "processes at once), packed (--jobs runs as one computation in this process) "
                                        "or slurm (submitit)")),
    ("jobs", int, typer.Option(2, "--jobs", help="parallel: runs at once (sharing the GPUs round-robin, or the CPU "
                                                 "cores); packed: runs per pack")),
    ("partition", Optional[str], typer.Option(None, "--partition", help="slurm: partition")),
    ("gpus_per_node", int, typer.Option(0, "--gpus-per-node", help="slurm: GPUs (one task each) per node")),
    ("nodes", int, typer.Option(1, "--nodes", help="slurm: nodes per run")),
    ("timeout_min", int, typer.Option(24 * 60, "--timeout-min", help="slurm: time limit per job (requeued and "
                                                                     "resumed past it)")),
    ("slurm", Optional[List[str]], typer.Option(None, "--slurm", help="slurm: extra key=value passed to submitit as "
                                                                       "slurm_<key> (repeatable)")),
]


def with_launcher(command):
    """Give ``command`` the launcher flags; it receives them as ``launcher`` (a
    LaunchOptions, checked). Typer reads the signature this sets."""
    import inspect

    signature = inspect.signature(command)
    kept = [p for p in signature.parameters.values() if p.name != "launcher"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, kind, option in LAUNCHER_FLAGS]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .launch import LaunchOptions, parse_slurm_options

        flags = {name: kwargs.pop(name) for name, _, _ in LAUNCHER_FLAGS}
        opts = LaunchOptions(flags["launcher_name"], flags["jobs"], flags["partition"], flags["gpus_per_node"],
                             flags["nodes"], flags["timeout_min"], parse_slurm_options(flags["slurm"] or []))
        opts.check()
        return command(*args, launcher=opts, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=kept + added)
    wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "launcher"}
    wrapper.__annotations__.update({name: kind for name, kind, _ in LAUNCHER_FLAGS})
    return wrapper


@app.command()
@guarded
def train(
    experiment: str = typer.Argument(..., help="experiment name (conf/experiment/*.yaml): quickstart, cifar100, cifar10, imagenet"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value, e.g. trainer.epochs=10"),
    resume: bool = typer.Option(False, "--resume", help="continue the latest run of this experiment (or out_dir=)"),
    extend_epochs: bool = typer.Option(False, "--extend-epochs",
                                       help="continue a run with another trainer.epochs (moves the lr schedule's horizon)"),
):
    """Train one model (quantizable by default) and write its run directory.

    Example: qdnn train cifar100 trainer.epochs=10 'quant.bits=[2,4,32]'"""
    from .commands import train_one

    train_one(experiment, overrides or [], resume_latest=resume, extend_epochs=extend_epochs)


@app.command()
@guarded
@with_launcher
def ablate(
    experiment: str = typer.Argument("cifar100", help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value"),
    no_consistency: bool = typer.Option(False, "--no-consistency", help="train without the consistency loss"),
    no_bit_specific_bn: bool = typer.Option(False, "--no-bit-specific-bn", help="train with one shared BN"),
    grid: str = typer.Option("ablation", "--grid", help="variants: conf/grid/NAME.yaml or a YAML file"),
    launcher=None,
):
    """Ablations: with a flag, that variant; with none, every variant of the grid
    (full, no consistency, shared BN, both off).

    Example: qdnn ablate cifar100 --no-consistency trainer.epochs=30"""
    from .commands import run_ablation

    flags = [k for k, on in (("no_consistency", no_consistency), ("shared_bn", no_bit_specific_bn)) if on]
    run_ablation(experiment, overrides or [], "_".join(flags) or None, grid, launcher)


@app.command("sweep-bits")
@guarded
@with_launcher
def sweep_bits(
    experiment: str = typer.Argument("cifar100", help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value"),
    bits: str = typer.Option("2,3,4,8,32", "--bits", help="bit modes (1-8, 32, or wXaY such as w2a4), one dedicated model each"),
    launcher=None,
):
    """One dedicated ("quantized DNN") model per bit-width, same recipe.

    Example: qdnn sweep-bits cifar100 --bits 2,4,32 --launcher packed --jobs 3"""
    from .commands import parse_bits, run_bit_sweep

    run_bit_sweep(experiment, overrides or [], parse_bits(bits), launcher)


@app.command()
@guarded
@with_launcher
def multirun(
    experiment: str = typer.Argument(..., help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides; key=v1,v2 sweeps (Hydra's multirun syntax)"),
    launcher=None,
):
    """Any grid: every combination of the swept keys' values, one run each.

    Example: qdnn multirun cifar100 optim.lr=0.05,0.1 loss.temperature=1,2"""
    from .commands import run_multirun

    run_multirun(experiment, overrides or [], launcher)


@app.command()
@guarded
def status(paths: List[Path] = typer.Argument(..., help="a group directory, run directories, or folders holding them")):
    """Every run of a group: state, epoch, last validation top-1 per mode, job id.

    Example: qdnn status runs/cifar100/ablate-20261128-160000"""
    from .commands import show_status

    show_status(paths)


@app.command("eval")
@guarded
def eval_cmd(
    target: Path = typer.Argument(..., help="run directory or checkpoint file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides of the run's config, e.g. data.root=..."),
    bits: Optional[str] = typer.Option(None, "--bits", help="bit modes to evaluate, e.g. 4,w2a4 (default: the trained ones)"),
    calibrate_bn: int = typer.Option(0, "--calibrate-bn", help="re-estimate BN of untrained modes from N training batches"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best (for a run directory)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    config: Optional[Path] = typer.Option(None, "--config", help="a per-layer bit configuration (YAML) to evaluate too"),
    recalibrate_trained: bool = typer.Option(False, "--recalibrate-trained",
                                             help="re-estimate the trained modes' BN statistics too (needs --calibrate-bn N)"),
    split: str = typer.Option("val", "--split", help="val, or train: the images the run trained on, un-augmented "
                              "(the train/validation gap)"),
):
    """Evaluate a trained model in any bit modes (and a per-layer bit configuration);
    untrained bit-widths need --calibrate-bn N.

    Example: qdnn eval runs/cifar100/20261128-160000 --bits 3,5 --calibrate-bn 20"""
    from .commands import evaluate_run

    evaluate_run(target, overrides or [], bits, calibrate_bn, checkpoint, device, config, recalibrate_trained, split)


@app.command()
@guarded
def export(
    target: Path = typer.Argument(..., help="run directory or checkpoint file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides of the run's config, e.g. data.root=..."),
    modes: Optional[str] = typer.Option(None, "--modes", help="bit modes to export, e.g. 2,4,32 (default: the trained ones)"),
    config: Optional[Path] = typer.Option(None, "--config", help="a per-layer bit configuration (YAML) to export too"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: RUN/export)"),
    images: int = typer.Option(0, "--images", help="validation images for the parity check (0: all)"),
    calibrate_bn: int = typer.Option(0, "--calibrate-bn", help="re-estimate BN of untrained modes from N training batches"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best (for a run directory)"),
    form: str = typer.Option("integer", "--format", help="integer (ConvInteger kernels) or qdq "
                             "(QuantizeLinear/DequantizeLinear around float operators, fused by the runtime)"),
    residual: str = typer.Option("float", "--residual", help="qdq: the residual sums and what feeds them stay "
                                 "float (exact), or go through 8 bits (every convolution and sum an integer kernel: "
                                 "faster, adds 8-bit roundings; parity is checked against qdnn rounding alike)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier export in --out (never a run), or export "
                               "a run that is still training"),
    bench: bool = typer.Option(False, "--bench", help="time every mode in ONNX Runtime afterwards (as bench-export)"),
    threads: int = typer.Option(2, "--threads", help="ONNX Runtime threads for --bench"),
):
    """Export a trained run's bit modes to ONNX with integer convolutions (one file per
    mode plus one switchable package), checked against qdnn's own predictions. Needs
    the export extra: pip install 'qdnn[export]'.

    Example: qdnn export runs/cifar100/20261128-160000 --modes 2,4,32 --out deploy/ --bench"""
    from .commands import export_run

    export_run(target, overrides or [], modes, config, out, images, calibrate_bn, checkpoint, force, bench, threads,
               form, residual)


@app.command("bench-export")
@guarded
def bench_export(
    folder: Path = typer.Argument(..., help="a folder written by qdnn export"),
    threads: int = typer.Option(2, "--threads", help="the runtime's intra-op threads"),
    repeats: int = typer.Option(20, "--repeats", help="timed runs per mode and batch size (median reported)"),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime or openvino (pip install 'qdnn[openvino]')"),
):
    """CPU latency of every exported mode at batch 1 and 32 against FP, in ONNX Runtime or
    OpenVINO, written into the folder's export.csv.

    Example: qdnn bench-export deploy/ --threads 2 --repeats 50 --runtime openvino"""
    from .commands import bench_export_dir

    bench_export_dir(folder, threads, repeats, runtime)


@app.command()
@guarded
def search(
    target: Path = typer.Argument(..., help="run directory (its last checkpoint) or checkpoint file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides of the run's config, e.g. data.root=..."),
    budget_bops: Optional[str] = typer.Option(None, "--budget-bops", help="BOPs budget: a number (K/M/G) or a mode, e.g. 3-bit"),
    budget_size_mb: Optional[str] = typer.Option(None, "--budget-size-mb", help="model size budget in MB, or a mode"),
    candidates: int = typer.Option(60, "--candidates", help="configurations to evaluate (besides the uniform modes)"),
    seed: int = typer.Option(0, "--seed", help="seed of the search"),
    calibrate_bn: int = typer.Option(10, "--calibrate-bn", help="training batches to re-estimate BN per candidate"),
    search_images: int = typer.Option(2000, "--search-images", help="held-out training-split images to score on"),
    rerank: int = typer.Option(8, "--rerank", help="re-score the K best on as many other held-out images; "
                               "the best there wins (0: off)"),
    strategy: str = typer.Option("sensitivity", "--strategy", help="sensitivity (per-layer damage table, "
                                 "knapsack allocation, then evolution from it) or evolution (from random configurations)"),
    metric: str = typer.Option("kl", "--metric", help="what ranks candidates: kl (divergence from the "
                               "full-precision mode's predictions; low-noise) or top1"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: beside the checkpoint)"),
):
    """Per-layer weight/activation bits under a cost budget, from the trained model alone.

    Example: qdnn search runs/cifar100/20261128-160000 --budget-bops 3-bit"""
    from .commands import run_search

    run_search(target, overrides or [], budget_bops, budget_size_mb, candidates, seed, calibrate_bn, search_images,
               device, out, rerank, strategy, metric)


@app.command()
@guarded
def report(
    paths: List[Path] = typer.Argument(..., help="run directories or folders holding them"),
    fmt: Optional[str] = typer.Option(None, "--format", help="markdown or csv (default: csv for an --out "
                                      "ending in .csv, else markdown)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the table to this file"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="write accuracy-vs-bit-mode plot (PNG)"),
    budget_plot: Optional[Path] = typer.Option(None, "--plot-budget", help="write accuracy-vs-epochs plot (PNG): "
                                               "each variant's modes (--budget-modes) over the budgets it ran"),
    budget_axis: str = typer.Option("epochs", "--budget-axis", help="--plot-budget's x axis: epochs, or passes "
                                    "(forward/backward passes per training image: equal compute)"),
    budget_modes: Optional[str] = typer.Option(None, "--budget-modes", help="--plot-budget's modes, comma-separated "
                                               "(e.g. FP,4,2; default: the most and least precise present)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="add a reference table's rows: a CSV, or cifar100 / cifar10 / imagenet (shipped with qdnn)"),
    no_costs: bool = typer.Option(False, "--no-costs", help="leave out model size and BOPs rows"),
    convergence: Optional[Path] = typer.Option(None, "--convergence", help="write each variant's gain per mode "
                                               "from one budget to the next (on --budget-axis) and whether it "
                                               "is under 1 point in every mode: .md or .csv"),
):
    """One table from many runs: a row per comparable group of runs, a column per bit mode (top-1 %).

    Example: qdnn report runs/cifar100 --out table.md --plot table.png"""
    from .report import build_report

    text = build_report(paths, fmt, out, plot_path, reference, not no_costs, budget_plot, budget_axis, convergence,
                        budget_modes)
    console.print(text, markup=False, soft_wrap=True)
    for p in (out, plot_path, budget_plot, convergence):
        if p:
            console.print(f"written: {p}")


@app.command()
@guarded
def compare(
    left: str = typer.Argument(..., help="one variant's runs: a run directory, a folder of runs, or a quoted glob"),
    right: str = typer.Argument(..., help="the runs it is compared against, given the same way"),
    fmt: Optional[str] = typer.Option(None, "--format", help="markdown or csv (default: csv for an --out "
                                      "ending in .csv, else markdown)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the comparison to this file"),
):
    """One variant against another, per bit mode: top-1 left − right, seed against seed
    (and the train/val gaps, where both sides ran `qdnn eval RUN --split train`).

    Example: qdnn compare 'runs/c100/seed*/full' 'runs/c100/seed*/dedicated_2'"""
    from .report.compare import build_comparison

    console.print(build_comparison(left, right, fmt, out), markup=False, soft_wrap=True)
    if out:
        console.print(f"written: {out}")


@app.command()
@guarded
@with_launcher
def reproduce(
    experiment: str = typer.Argument(..., help="experiment name"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides for every run, e.g. trainer.epochs=5"),
    seeds: int = typer.Option(1, "--seeds", help="number of seeds (0..N-1)"),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where runs go (default runs/<name>/reproduce)"),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="where the report goes (default experiments/<name>; with --grid, the runs folder)"),
    grid: str = typer.Option("reproduce", "--grid", help="variants: conf/grid/NAME.yaml or a YAML file"),
    launcher=None,
):
    """The whole table: every variant of the grid (quantizable, ablations, one dedicated
    model per bit), per seed. Finished runs are skipped and interrupted ones resumed.

    Example: qdnn reproduce cifar100 --seeds 3 --launcher parallel --jobs 4"""
    from .commands import run_reproduction

    run_reproduction(experiment, overrides or [], seeds, runs_dir, report_dir, grid, launcher)


@app.command("config")
@guarded
def config_cmd(
    experiment: str = typer.Argument(..., help="experiment name (qdnn list)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value"),
):
    """Print the composed, validated config that `qdnn train` would run, and train nothing
    (Hydra's --cfg job).

    Example: qdnn config cifar100 trainer.epochs=10 quant=lsq"""
    from omegaconf import OmegaConf

    from .config import compose
    from .engine.device import resolve_amp, resolve_device

    cfg = compose(experiment, overrides or [])
    console.print(OmegaConf.to_yaml(cfg, resolve=True), markup=False, end="")
    if cfg.trainer.amp == "auto":  # the one choice made by the machine, not the config: say what it is here
        try:
            amp, why = resolve_amp("auto", resolve_device(cfg.trainer.device))
        except ValueError as e:  # e.g. trainer.device=cuda here: the run would refuse to start
            amp, why = "?", str(e)
        console.print(f"# trainer.amp resolves to {amp} on this machine ({why})", markup=False, soft_wrap=True)


@app.command("list")
@guarded
def list_cmd():
    """List experiments and models.

    Example: qdnn list"""
    from .config import experiments
    from .models import MODELS

    console.print("experiments: " + ", ".join(experiments()))
    console.print("models: " + ", ".join(sorted(MODELS)))


def main():
    from .startup import hold_stop_signals

    hold_stop_signals()  # first: a SIGTERM while importing stops resumably (exit 75), not with 143
    # Hydra and torch print deprecation chatter through warnings; keep the terminal clean.
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="hydra")
    app()


if __name__ == "__main__":
    sys.exit(main())
