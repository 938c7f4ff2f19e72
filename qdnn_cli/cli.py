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
console = Console(highlight=False)
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
    try:
        from . import commands  # noqa: F401 - registers ablate, sweep-bits, eval, report, reproduce
    except ImportError:
        pass
    app()


if __name__ == "__main__":
    sys.exit(main())
