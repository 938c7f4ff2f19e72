"""Bit modes: the settings a quantizable model is trained in and switched between.

A mode is an ``int`` when weights and activations share a bit-width (``4`` = w4a4,
``32`` = full precision) and a string ``"wXaY"`` when they differ (``"w2a4"``). Keeping
uniform modes as ints keeps every config, table and checkpoint written before separate
bits existed valid, byte for byte. Modes are ordered by cost — bit operations per
multiply-accumulate (w·a), then weight bits — so ``32`` is always the top mode and,
among uniform modes, the order is the numeric one.

Checkpoints store modes as int64 codes: a uniform mode is its bit-width, ``wXaY`` is
``100·X + Y`` (so old checkpoints decode unchanged).
"""
from __future__ import annotations

import re
from typing import Iterable, Union

from ..errors import InputError
from .quantizers import FULL_PRECISION, check_bits

Mode = Union[int, str]
_WA = re.compile(r"^w(\d+)a(\d+)$")


class BitModeError(InputError):
    """Asked for a bit mode the model was not built with, or mismatched checkpoints."""


def parse_mode(value) -> Mode:
    """``4`` / ``"4"`` / ``"w4a4"`` → 4, ``"fp"`` / ``32`` → 32, ``"w2a4"`` → ``"w2a4"``."""
    if isinstance(value, bool):
        raise BitModeError(f"{value!r} is not a bit mode: write 1-8, 32 (full precision) or wXaY (e.g. w2a4)")
    text = str(value).strip().lower()
    if text == "fp":
        return FULL_PRECISION
    m = _WA.match(text)
    try:
        w, a = (int(m.group(1)), int(m.group(2))) if m else (int(text), int(text))
        check_bits(w)
        check_bits(a)
    except (ValueError, TypeError):
        raise BitModeError(f"{value!r} is not a bit mode: write 1-8, 32 (full precision) or wXaY (e.g. w2a4)") from None
    return w if w == a else f"w{w}a{a}"


def mode_bits(mode: Mode) -> tuple[int, int]:
    """(weight bits, activation bits) of a mode, or of anything :func:`parse_mode` reads."""
    mode = mode if isinstance(mode, int) else parse_mode(mode)
    if isinstance(mode, int):
        return mode, mode
    m = _WA.match(mode)  # parse_mode's "wXaY" form, w != a
    return int(m.group(1)), int(m.group(2))


def mode_key(mode: Mode) -> tuple[int, int, int]:
    """Sort key: cost per MAC (w·a), then weight bits."""
    w, a = mode_bits(mode)
    return w * a, w, a


def sort_modes(modes: Iterable[Mode], descending: bool = False) -> list[Mode]:
    return sorted(modes, key=mode_key, reverse=descending)


def mode_label(mode: Mode) -> str:
    """How tables name a mode: ``FP``, ``4-bit``, ``w2a4``."""
    if isinstance(mode, int):
        return "FP" if mode == FULL_PRECISION else f"{mode}-bit"
    return str(mode)


def mode_from_label(label: str) -> Mode:
    """The inverse of :func:`mode_label` (also accepts what :func:`parse_mode` does)."""
    text = str(label).strip()
    return parse_mode(text[:-4] if text.lower().endswith("-bit") else text)


def mode_code(mode: Mode) -> int:
    w, a = mode_bits(mode)
    return w if w == a else 100 * w + a


def mode_from_code(code: int) -> Mode:
    code = int(code)
    return code if code <= FULL_PRECISION else parse_mode(f"w{code // 100}a{code % 100}")


def weight_bits(modes: Iterable[Mode]) -> list[int]:
    """The weight bit-widths a set of modes uses, ascending."""
    return sorted({mode_bits(m)[0] for m in modes})


def act_bits(modes: Iterable[Mode]) -> list[int]:
    """The activation bit-widths a set of modes uses, ascending."""
    return sorted({mode_bits(m)[1] for m in modes})


def nearest_mode(mode: Mode, candidates: Iterable[Mode]) -> Mode:
    """The candidate closest in (weight, activation) bits; ties go to the costlier one."""
    w, a = mode_bits(mode)
    return min(candidates, key=lambda c: (abs(mode_bits(c)[0] - w) + abs(mode_bits(c)[1] - a),
                                          tuple(-k for k in mode_key(c))))
