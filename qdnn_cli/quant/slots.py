"""Mode batch: every bit mode of a step in one forward.

A quantizable step trains several bit modes on the same images. Run one after another,
each mode is a full network of small kernels; in a mode batch each layer runs all of
them at once (:mod:`.layers`: slots side by side in the channel axis, one grouped
convolution, one BN over slots × channels). Slot ``i`` computes exactly what the model
computes under ``apply_bits(model, settings[i])``, so the logits, the losses and every
gradient equal the per-mode step's (up to floating-point summation order)::

    with mode_batch(model, [32, 4, 2]):
        logits = split_slots(model(x), 3)   # [logits at 32, at 4, at 2]

A setting is a bit mode (``4``, ``"w2a4"``) or a per-layer :class:`~.mixed.BitConfig`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .layers import BitSpecificBN, _switchables, current_bit_mode
from .mixed import apply_bits


def _slot_settings(model: nn.Module, settings: tuple) -> list[tuple]:
    """Per switchable layer, what it runs in each slot: (w, a) bits or the BN key. Found
    by applying each setting in turn (one source of truth: :func:`apply_bits`), cached
    per settings tuple."""
    cache = model.__dict__.setdefault("_qdnn_slot_settings", {})
    found = cache.get(settings)
    if found is None:
        layers = _switchables(model)
        per_layer: list[list] = [[] for _ in layers]
        previous = current_bit_mode(model)
        try:
            for s in settings:
                apply_bits(model, s)
                for i, m in enumerate(layers):
                    per_layer[i].append(m._key if isinstance(m, BitSpecificBN) else (m.w_bits, m.a_bits))
        finally:
            apply_bits(model, previous)
        found = cache[settings] = [tuple(p) for p in per_layer]
    return found


def set_mode_batch(model: nn.Module, settings: Sequence) -> nn.Module:
    """From now on ``model(x)`` returns every setting's output side by side along dim 1
    (``[batch, len(settings)·classes]``); :func:`clear_mode_batch` ends it."""
    settings = tuple(settings)
    if not settings:
        raise ValueError("a mode batch needs at least one bit mode")
    for m, slots in zip(_switchables(model), _slot_settings(model, settings)):
        m.slots = slots
    model.__dict__["_qdnn_slots"] = len(settings)
    return model


def clear_mode_batch(model: nn.Module) -> nn.Module:
    for m in _switchables(model):
        m.slots = None
    model.__dict__.pop("_qdnn_slots", None)
    return model


@contextlib.contextmanager
def mode_batch(model: nn.Module, settings: Sequence) -> Iterator[nn.Module]:
    set_mode_batch(model, settings)
    try:
        yield model
    finally:
        clear_mode_batch(model)


def split_slots(output: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``[batch, n·k]`` → n tensors ``[batch, k]``, one per slot."""
    return output.unflatten(1, (n, -1)).unbind(1)
