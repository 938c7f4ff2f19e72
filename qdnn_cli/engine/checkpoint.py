"""Checkpoints: atomic writes, safe reads, and a lock per run directory.

A checkpoint is a plain dict of tensors and Python containers, so it loads with
``torch.load(weights_only=True)``: a file carrying arbitrary pickled objects is refused
and nothing in it executes. Writes go to a temporary file in the same folder, are
fsync'ed, then renamed over the old file, so a kill at any moment leaves the previous
checkpoint readable, and a full disk leaves it untouched.
"""
from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import torch

from ..errors import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be read or written."""


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        full = isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)
        why = "the disk is full" if full else str(e).splitlines()[0]
        keep = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"could not save {path}: {why}{keep}") from None


def safe_load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; any failure is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; very old files are a raw pickle (protocol byte 0x80)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a checkpoint: not a file torch.save wrote (give a run directory "
                              "or its checkpoint.pt / best.pt)")
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: the refusal below says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "weights_only" in msg.lower():
            raise CheckpointError(
                f"refusing {path}: it contains pickled Python objects, not just tensors "
                "(loading it could run code); only plain checkpoints are accepted"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: {msg.splitlines()[0]}") from None
    except Exception as e:  # truncated zip, legacy/foreign pickle (KeyError, EOFError, ...)
        first = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or foreign file): {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a qdnn checkpoint (holds a {type(obj).__name__})")
    return obj


class RunLock:
    """Exclusive lock on a run directory (``.lock``): a second writer fails fast.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so
    forked DataLoader workers do not inherit it, and a run killed with -9 can be resumed
    at once instead of after its orphaned workers notice and exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd = None

    _held: set = set()  # record locks do not exclude their own process: these paths are ours

    def acquire(self) -> "RunLock":
        import fcntl

        key = str(self.path.resolve())
        if key in RunLock._held:  # (opening or reading the file here would drop our own lock)
            raise CheckpointError(f"run directory {self.path.parent} is in use by pid {os.getpid()} (this process); "
                                  "wait for it or choose another out_dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise CheckpointError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd, self._key = fd, key
        RunLock._held.add(key)
        return self

    def holder(self) -> str | None:
        """Who holds the lock now (None: nobody), found by taking it for an instant."""
        try:
            self.acquire()
        except CheckpointError:
            return self.path.read_text().strip() or "another process"
        self.release()
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            RunLock._held.discard(self._key)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
