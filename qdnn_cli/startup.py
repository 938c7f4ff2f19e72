"""A stop signal that arrives while ``qdnn`` is still starting (imports take a second or
two) is held, not fatal: :func:`hold_stop_signals` is the first thing ``main`` does, and
:func:`take_held_signal` tells the command wrapper whether one came, so such a run
stops with the resumable exit code (75) instead of dying with 143. Standard library only:
this runs before anything heavy is imported.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
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


class StopRequested(Exception):
    """A stop signal during a command that cleans up and ends (not a resumable training)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_stop(signum, frame) -> None:
    raise StopRequested(signum)


@contextlib.contextmanager
def stop_signals_raise():
    """Within: a stop signal raises :class:`StopRequested` where the code is, so that its
    ``finally`` blocks remove what is half-written (a default SIGTERM would end the process
    and leave it). The previous handlers come back after. Outside the main thread, where
    handlers cannot be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_signals_blocked():
    """Within: stop signals wait (a few file renames that must not stop halfway); one that
    came is delivered on leaving."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
