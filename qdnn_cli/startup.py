"""A stop signal that arrives while ``qdnn`` is still starting (imports take a second or
two) is held, not fatal: :func:`hold_stop_signals` is the first thing ``main`` does, and
:func:`take_held_signal` tells the command wrapper whether one came, so such a run
stops with the resumable exit code (75) instead of dying with 143. Standard library only:
this runs before anything heavy is imported.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)
PAUSE_AT_START_ENV = "QDNN_TEST_PAUSE_AT_START"  # tests: a file to write, then wait there for a signal
_held: dict = {"signal": None}


def _hold(signum, frame) -> None:
    _held["signal"] = signum


def hold_stop_signals() -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, _hold)
    marker = os.environ.get(PAUSE_AT_START_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
        while _held["signal"] is None:
            time.sleep(0.05)


def take_held_signal() -> int | None:
    """The signal held since start (None: none came); the default handlers come back, so
    each command installs its own (training's stop cleanly, others end as usual)."""
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is _hold:  # only ours: a host process's own handlers stay
            signal.signal(s, signal.SIG_DFL)
    held, _held["signal"] = _held["signal"], None
    return held
