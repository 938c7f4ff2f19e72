"""Which errors are the user's to fix (one line, exit 2) and which are qdnn's (exit 1).

The ground floor: this module imports nothing of qdnn's. Every error a user can fix
derives from :class:`InputError` where it is raised (a config, data, checkpoint, bit
mode or pack error, a diverged run); Python's own ``ValueError`` and
``FileNotFoundError`` from bad flags and paths count too. Nothing else classifies errors.
"""
from __future__ import annotations


class InputError(ValueError):
    """Something the user gave or has to fix; the message says what, in one line."""


def is_input_error(error: BaseException) -> bool:
    return isinstance(error, (InputError, ValueError, FileNotFoundError))
