"""Evaluate a model in every given bit mode, and re-estimate a mode's BN statistics.

``evaluate`` is what training runs after each epoch; ``calibrate_bn`` is slimmable
networks' post-hoc BN calibration (reset, cumulative average, no gradients), which
``qdnn eval`` and ``qdnn search`` use on a loaded run (:mod:`qdnn_cli.loaded_run`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..quant import BitSpecificBN
from ..quant.mixed import apply_bits
from ..quant.slots import mode_batch, split_slots
from .step import topk_correct


def _mode_logits(model, x, modes, amp_ctx, batched: bool):
    """(mode, logits) of every mode on one batch: one mode batch, or mode after mode."""
    if batched:
        with mode_batch(model, modes), amp_ctx():
            yield from zip(modes, split_slots(model(x), len(modes)))
        return
    for m in modes:
        apply_bits(model, m)
        with amp_ctx():
            yield m, model(x)


@torch.no_grad()
def evaluate(model, loader, modes, amp_ctx=contextlib.nullcontext, dist_ctx=None, batched: bool = False) -> dict:
    """Top-1/top-5/loss per mode; each batch is read once and run through every mode
    (``batched``: all modes in one forward). Under torchrun the counts are summed over
    ranks (``dist_ctx``)."""
    model.eval()
    device = next(model.parameters()).device
    sums = {m: torch.zeros(4, device=device, dtype=torch.float64) for m in modes}  # loss, top1, top5, n
    for x, y in loader:
        for m, logits in _mode_logits(model, x, modes, amp_ctx, batched and len(modes) > 1):
            logits = logits.float()
            top1, top5 = topk_correct(logits, y, 5)
            s = sums[m]
            s[0] += F.cross_entropy(logits, y, reduction="sum")
            s[1] += top1
            s[2] += top5
            s[3] += y.numel()
    out = {}
    for m in modes:
        s = dist_ctx.sum_tensor(sums[m]) if dist_ctx else sums[m]
        n = max(1.0, s[3].item())
        out[m] = {"loss": s[0].item() / n, "top1": 100 * s[1].item() / n, "top5": 100 * s[2].item() / n}
    return out


@torch.no_grad()
def calibrate_bn(model, loader, mode: int, batches: int) -> int:
    """Re-estimate the running statistics of the BNs ``mode`` (a bit mode or configuration)
    selects, from ``batches`` training batches."""
    apply_bits(model, mode)
    bns = [m.bn[m._key] for m in model.modules() if isinstance(m, BitSpecificBN)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    seen = 0
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
        seen += 1
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
    model.eval()
    return seen


def bn_state(model) -> dict:
    """Every BatchNorm's statistics and affine parameters (to undo a calibration)."""
    return {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}


def load_bn_state(model, state: dict) -> None:
    model.load_state_dict(state, strict=False)
