"""Training engine: ``run_training`` is the one entry point every command uses."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import InputError
from .checkpoint import CheckpointError, RunLock, atomic_save, safe_load
from ..quant import mode_label
from .evaluation import evaluate
from .interrupt import RESUMABLE_EXIT, RunInterrupted
from .loop import Trainer, TrainingDiverged

# Keys that may change between an interrupted run and its resumption.
# ``trainer.mode_batch`` runs the same arithmetic in one forward instead of one per mode (a
# pack switches it on for its members), so a run may resume either way.
RESUMABLE_DIFFERENCES = ("trainer.progress", "trainer.checkpoint_every_minutes", "trainer.num_threads", "trainer.log_every",
                         "trainer.device", "trainer.stop_after", "trainer.eval_every", "out_dir", "data.root", "data.workers",
                         "trainer.eval_batch_size", "trainer.mode_batch", "model.init_sha256",
                         "model.init_passes")


class RunMismatch(InputError):
    """An existing run directory holds a run with another configuration."""


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_same_run(cfg: DictConfig, run_dir: Path, extend_epochs: bool = False) -> None:
    """Refuse to continue a run directory whose saved config differs in what matters.
    ``trainer.epochs`` moves the schedule's horizon: only with ``extend_epochs``."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.exists() or not (Path(run_dir) / "checkpoint.pt").exists():
        return
    from ..schema import with_legacy_defaults

    # a key the saved run lacks was added later: the run trained with its schema default
    # (the old behaviour), so a changed default today is a difference too
    old = _flatten(OmegaConf.to_container(with_legacy_defaults(OmegaConf.load(saved_path)), resolve=True))
    new = _flatten(OmegaConf.to_container(cfg, resolve=True))
    for flat in (old, new):  # quant.bn, when set, decides; runs saved before it was settled say otherwise
        if flat.get("quant.bn") is not None:
            flat["quant.bit_specific_bn"] = flat["quant.bn"] == "bit_specific"
    # keys only one side has (a removed key; another data family's fields) are not the user's
    diffs = [k for k in sorted(set(old) & set(new))
             if old[k] != new[k] and not k.startswith(RESUMABLE_DIFFERENCES)]
    if extend_epochs and "trainer.epochs" in diffs:
        diffs.remove("trainer.epochs")
    if diffs == ["trainer.epochs"]:
        raise RunMismatch(f"{run_dir} holds a run of trainer.epochs={old['trainer.epochs']}, this one asks for "
                          f"{new['trainer.epochs']}: that moves the lr schedule's horizon mid-run; pass "
                          "--extend-epochs to continue anyway, or choose another out_dir for a clean run")
    if diffs:
        headline = ("model.name", "data.name", "quant.bits", "trainer.kind")
        k = sorted(diffs, key=lambda d: (d not in headline, headline.index(d) if d in headline else 0, d))[0]
        # trainer.amp=auto resolves per machine: name the precision the run has to continue it
        way = (f"pass trainer.amp={old.get(k)} to continue it, or choose another out_dir" if k == "trainer.amp"
               else "choose another out_dir")
        raise RunMismatch(f"{run_dir} holds a run with {k}={old.get(k)!r}, this one has {k}={new.get(k)!r}"
                          f"{f' (+{len(diffs) - 1} more differences)' if len(diffs) > 1 else ''}; {way}")


def check_runnable(cfg: DictConfig, checked_data: set | None = None) -> None:
    """What would stop a composed run before its first step, found before anything is
    written: the device, the precision it supports, the data (a CIFAR archive missing is
    downloaded here, once). ``checked_data`` remembers data configs already checked, so a
    grid checks each data set once."""
    from ..data import ensure_available
    from .device import resolve_device

    t = cfg.trainer
    device = resolve_device(t.device)
    if t.amp == "fp16" and device.type != "cuda":
        raise ValueError("trainer.amp=fp16 needs CUDA; use bf16 or none on CPU")
    if cfg.model.get("init_from"):
        from .init_from import check_source

        check_source(cfg)
    key = repr(sorted(OmegaConf.to_container(cfg.data, resolve=True).items()))
    if checked_data is None or key not in checked_data:
        ensure_available(cfg.data)
        if checked_data is not None:
            checked_data.add(key)


def run_training(cfg: DictConfig, run_dir: Path, overrides, console=None, resume: bool = True,
                 on_ready=None, fresh: bool = False, extend_epochs: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming what is there). ``on_ready`` is called
    once data and model are built. If the run fails before its first epoch is recorded,
    a directory this invocation created (``fresh``) is removed for input errors; any
    other failure leaves ``status.json`` marked failed with the reason, and an
    unexpected error's traceback in ``error.log``."""
    from .rundir import save_config

    try:
        trainer = Trainer(cfg, run_dir, console=console, resume=resume)
    except Exception as e:  # e.g. trainer.device=cuda on a machine without one: leave no empty folder
        from ..errors import is_input_error

        if fresh and is_input_error(e) and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
            Path(run_dir).rmdir()
        raise
    lock, error = None, None
    try:
        if trainer.dist.is_main:  # only rank 0 owns the run directory
            try:
                lock = RunLock(run_dir).acquire()
                check_same_run(cfg, run_dir, extend_epochs)
                save_config(cfg, Path(run_dir), list(overrides))
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        # every rank learns whether rank 0 may proceed, so none waits forever in a collective
        if not trainer.dist.all_ok(error is None):
            raise error or RuntimeError("rank 0 could not prepare the run directory; see its error")
        try:
            return trainer.fit(on_ready=on_ready)
        except RunInterrupted:
            raise  # status.json already says stopped, with where
        except Exception as e:
            if trainer.dist.is_main:
                _record_failure(trainer, Path(run_dir), e, fresh)
            raise
    finally:
        if lock is not None:
            lock.release()
        trainer.dist.shutdown()


def _record_failure(trainer: Trainer, run_dir: Path, error: Exception, fresh: bool) -> None:
    import traceback

    from ..errors import is_input_error

    started = (run_dir / "checkpoint.pt").exists()
    if fresh and not started and is_input_error(error):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # nothing was trained: leave no orphan folder
        return
    if not is_input_error(error):
        (run_dir / "error.log").write_text("".join(traceback.format_exception(error)))
        error.log_path = run_dir / "error.log"
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    state = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
    if state.get("state") != "failed":  # a divergence already said why
        trainer.files.status("failed", trainer.start_epoch if not started else int(state.get("epoch", 0)),
                             f"{type(error).__name__}: {message}")


__all__ = ["run_training", "check_runnable", "Trainer", "TrainingDiverged", "CheckpointError", "RunMismatch", "evaluate",
           "atomic_save", "safe_load", "mode_label", "check_same_run"]
