"""Mode batch: every bit mode of a step in one forward — of one model, or of a pack.

A quantizable step trains several bit modes on the same images. Run one after another,
each mode is a full network of small kernels; in a mode batch each layer runs all of
them at once (:mod:`.layers`: slots side by side in the channel axis, one grouped
convolution, one BN over slots × channels). Slot ``i`` computes exactly what the model
computes under ``apply_bits(model, settings[i])``, so the logits, the losses and every
gradient equal the per-mode step's (up to floating-point summation order)::

    with mode_batch(model, [32, 4, 2]):
        logits = split_slots(model(x), 3)   # [logits at 32, at 4, at 2]

A *pack* is several models of one architecture (runs that differ in seed, data order,
loss or bit modes) run as one: the first model's modules drive the forward, every slot
takes its parameters from its own model's layer, and the input holds one batch per
model side by side in channels (:func:`pack_inputs`)::

    with pack_batch([model_a, model_b], [[32, 4, 2], [32, 4, 2]]):
        out = split_slots(model_a(pack_inputs([xa, xb])), 6)  # a's three modes, then b's

A setting is a bit mode (``4``, ``"w2a4"``) or a per-layer :class:`~.mixed.BitConfig`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError
from .layers import BitSpecificBN, SlotPlan, _switchables, current_bit_mode
from .mixed import apply_bits


class PackError(InputError):
    """Models that cannot run as one pack (another architecture or quantizer)."""


def _slot_settings(model: nn.Module, settings: tuple) -> list[tuple]:
    """Per switchable layer, what it runs in each slot: (w, a) bits or the BN key. Found
    by applying each setting in turn (one source of truth: :func:`apply_bits`), cached
    per tuple of bit modes."""
    cache = model.__dict__.setdefault("_qdnn_slot_settings", {})
    found = cache.get(settings)
    if found is None:
        # per-layer configurations (mode_sampling=mixed) are new every step: never cached
        cacheable = all(isinstance(x, (int, str)) for x in settings)
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
        found = [tuple(p) for p in per_layer]
        if cacheable:
            cache[settings] = found
    return found


def _layer_signature(m: nn.Module) -> tuple:
    if isinstance(m, BitSpecificBN):  # BN kinds may mix in a pack (each slot uses its own model's)
        return ("BitSpecificBN", next(iter(m.bn.values())).num_features)
    return (type(m).__name__, m.quantize, m.quantize_input, type(m.act_quant).__name__,
            type(m.weight_quant).__name__, tuple(m.weight.shape))


def check_packable(models: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
    """Every model has the first one's layers, quantizers and shapes, or a PackError says
    which differs."""
    names = list(names or [f"model {i}" for i in range(len(models))])
    first = [_layer_signature(m) for m in _switchables(models[0])]
    for model, name in zip(models[1:], names[1:]):
        if type(model) is not type(models[0]):
            raise PackError(f"{name} is a {type(model).__name__}, {names[0]} a {type(models[0]).__name__}: "
                            "a pack holds one architecture")
        other = [_layer_signature(m) for m in _switchables(model)]
        if len(other) != len(first):
            raise PackError(f"{name} has {len(other)} switchable layers, {names[0]} {len(first)}")
        for i, (a, b) in enumerate(zip(first, other)):
            if a != b:
                raise PackError(f"{name} differs from {names[0]} at switchable layer {i} ({b} vs {a}): "
                                "a pack needs the same architecture, quantizers and quantized layers")


def set_pack_batch(models: Sequence[nn.Module], settings: Sequence[Sequence]) -> nn.Module:
    """From now on ``models[0](x)`` runs ``settings[r]`` of every ``models[r]`` side by side
    and returns their outputs along dim 1 (run after run, setting after setting); ``x`` is
    one input for all or one per model (:func:`pack_inputs`). Returns the driver,
    ``models[0]``; :func:`clear_pack_batch` ends it."""
    settings = [tuple(s) for s in settings]
    if not settings or any(not s for s in settings) or len(settings) != len(models):
        raise ValueError("a mode batch needs at least one bit mode for each model")
    per_model = [_slot_settings(m, s) for m, s in zip(models, settings)]
    layers = [_switchables(m) for m in models]
    runs = tuple(len(s) for s in settings)
    for i, driver in enumerate(layers[0]):
        slot_settings, owners = [], []
        for r in range(len(models)):
            slot_settings += per_model[r][i]
            owners += [layers[r][i]] * runs[r]
        driver.slots = SlotPlan(tuple(slot_settings), tuple(owners), runs)
    models[0].__dict__["_qdnn_slots"] = sum(runs)
    return models[0]


def clear_pack_batch(model: nn.Module) -> nn.Module:
    for m in _switchables(model):
        m.slots = None
    model.__dict__.pop("_qdnn_slots", None)
    return model


def set_mode_batch(model: nn.Module, settings: Sequence) -> nn.Module:
    """One model: ``model(x)`` returns every setting's output side by side along dim 1
    (``[batch, len(settings)·classes]``)."""
    return set_pack_batch([model], [settings])


clear_mode_batch = clear_pack_batch


@contextlib.contextmanager
def pack_batch(models: Sequence[nn.Module], settings: Sequence[Sequence]) -> Iterator[nn.Module]:
    driver = set_pack_batch(models, settings)
    try:
        yield driver
    finally:
        clear_pack_batch(driver)


@contextlib.contextmanager
def mode_batch(model: nn.Module, settings: Sequence) -> Iterator[nn.Module]:
    with pack_batch([model], [settings]) as driver:
        yield driver


def pack_inputs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One batch per model, side by side in channels (``[batch, models·channels, ...]``)."""
    if len(inputs) == 1:
        return inputs[0]
    out = torch.cat(list(inputs), dim=1)
    if inputs[0].dim() == 4 and inputs[0].is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def split_slots(output: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``[batch, n·k]`` → n tensors ``[batch, k]``, one per slot."""
    return output.unflatten(1, (n, -1)).unbind(1)
