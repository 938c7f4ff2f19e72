"""Words for messages (imports nothing of qdnn's)."""
from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs``: a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
