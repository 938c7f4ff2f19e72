"""Which errors are the user's to fix (one line, exit 2) and which are qdnn's (exit 1)."""
from __future__ import annotations


def input_errors() -> tuple[type, ...]:
    from .config import ConfigError
    from .data import DataError
    from .engine.checkpoint import CheckpointError
    from .engine.loop import TrainingDiverged
    from .quant import BitModeError

    # ValueError and FileNotFoundError: raised for bad flags, paths and config values
    return (ConfigError, DataError, CheckpointError, BitModeError, TrainingDiverged, ValueError, FileNotFoundError)


def is_input_error(error: BaseException) -> bool:
    return isinstance(error, input_errors())
