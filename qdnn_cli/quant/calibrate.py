"""Calibration of data-initialised quantizer parameters (LSQ step sizes) before training.

LSQ sets each mode's step from the first tensor it quantizes. Doing that lazily inside
the first training forward costs a host sync (``.item()``), which a whole-step compiled
graph cannot hold, and under data parallelism each process would see its own shard. An
explicit pass runs one batch through every mode first; batch-norm statistics are left
exactly as they were, so training then proceeds as if the steps had been set lazily.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import set_bit_mode
from .modes import sort_modes
from .quantizers import LSQQuantizer


def _data_initialised(model: nn.Module) -> list[LSQQuantizer]:
    return [m for m in model.modules() if isinstance(m, LSQQuantizer)]


def needs_calibration(model: nn.Module) -> bool:
    return any(q.uninitialised() for q in _data_initialised(model))


@torch.no_grad()
def calibrate_quantizers(model: nn.Module, x: torch.Tensor, modes) -> None:
    """Set every uninitialised step from one batch ``x``, mode by mode (highest first)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in norms]
    was_training = model.training
    model.train()  # the steps see what they will see in training: batch statistics in BN
    try:
        for m in sort_modes(modes, descending=True):
            set_bit_mode(model, m)
            model(x)
    finally:
        for bn, state in zip(norms, saved):
            bn.load_state_dict(state)
        model.train(was_training)


def mark_calibrated(model: nn.Module) -> None:
    """After calibration (or loading trained steps): forwards skip the initialisation check."""
    for q in _data_initialised(model):
        q.mark_ready()
