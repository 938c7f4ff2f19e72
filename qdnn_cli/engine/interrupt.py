"""Stopping a run mid-epoch and picking it up at the same batch.

* :class:`StopSignals`: SIGTERM and SIGUSR1 (what SLURM sends before a time limit) only
  set a flag; the trainer checks it after each step, writes a mid-epoch checkpoint and
  stops with :class:`RunInterrupted` (exit code 75: run the same command to resume).
* :func:`epoch_position` / :func:`restore_position`: what a mid-epoch checkpoint adds to
  an epoch checkpoint — the step reached, the epoch's running statistics and the
  mode-sampling generator — so the resumed epoch ends with exactly the numbers of an
  uninterrupted one (the data order and augmentation are pure functions of the epoch).
* Fault hooks for tests (environment variables, "E:S" = after step S of epoch E):
  ``QDNN_TEST_KILL_AT`` kills the process with SIGKILL; ``QDNN_TEST_PAUSE_AT`` waits there
  (once per run directory) until a signal arrives.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

KILL_AT_ENV = "QDNN_TEST_KILL_AT"
PAUSE_AT_ENV = "QDNN_TEST_PAUSE_AT"
RESUMABLE_EXIT = 75  # EX_TEMPFAIL: stopped on request, resumable


class RunInterrupted(Exception):
    """The run stopped on a signal after writing a mid-epoch checkpoint."""


_early: dict = {"signal": None}  # a stop signal that came before any StopSignals was entered


@contextlib.contextmanager
def early_signals():
    """Within it, SIGTERM/SIGUSR1 only set a flag that the next :class:`StopSignals` takes
    over: a signal during the seconds of composing, loading data and building the model
    stops the run at its start, with status.json and exit 75, instead of killing the
    process with nothing written. The previous handlers come back on exit. Main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: _early.update(signal=signum)) for s in StopSignals.SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _early["signal"] = None


class StopSignals:
    """``with StopSignals() as stop: ... if stop.requested: ...`` (main thread only)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.requested: int | None = None
        self._previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        if _early["signal"] is not None:
            self.requested, _early["signal"] = _early["signal"], None
        return self

    def _handle(self, signum, frame):
        self.requested = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def fault_hooks(epoch: int, step: int, run_dir: Path, stop: StopSignals) -> None:
    """Called after every step with 1-based ``epoch`` and ``step``."""
    here = f"{epoch}:{step}"
    if os.environ.get(KILL_AT_ENV) == here:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_AT_ENV) == here and not (run_dir / ".paused").exists():
        (run_dir / ".paused").write_text(str(os.getpid()))
        while stop.requested is None:  # until a signal stops (or, under submitit, requeues) the run
            time.sleep(0.05)


def epoch_position(step: int, stats, mode_rng, images: int) -> dict:
    """The part of a mid-epoch checkpoint that says where in the epoch the run is."""
    return {"step": step, "mode_rng": mode_rng.getstate(), "images": images,
            "stats": {name: {str(m): v for m, v in getattr(stats, name).items()}
                      for name in ("loss", "correct", "correct5", "seen")}}


def restore_position(position: dict, stats, mode_rng, device) -> int:
    """Load an epoch position into fresh ``stats`` and ``mode_rng``; returns the images seen."""
    import torch

    mode_rng.setstate(_as_tuple(position["mode_rng"]))
    for name, values in position["stats"].items():
        target = getattr(stats, name)
        for m, v in values.items():
            key = int(m) if m.lstrip("-").isdigit() else m
            target[key] = v.to(device) if isinstance(v, torch.Tensor) else v
    return int(position["images"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
