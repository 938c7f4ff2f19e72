"""One training step's forward and loss over bit modes, and what the epoch counts of it.

:func:`mode_losses` is the only step function. The eager trainer passes ``backward`` so
each mode's graph is freed right after its forward; the compiled whole-step graph
(``trainer.compile_scope=step``) passes none and gets the summed loss back for one
backward. Both give the same gradients because every teacher is detached.
``batched=True`` (``trainer.mode_batch``) runs every mode in one forward (a mode batch,
:mod:`qdnn_cli.quant.slots`) and one backward: the same losses and gradients, far fewer
and larger kernels.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..quant import BitConfig, LayerBits
from ..quant.mixed import apply_bits
from ..quant.modes import act_bits, weight_bits
from ..quant.slots import mode_batch, split_slots
from .losses import QuantizableLoss


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hits, top-k hits) of a batch, as device tensors (no host sync)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(y[:, None])
    return hit[:, 0].sum(), hit.any(dim=1).sum()


MODE_SAMPLING = ("all", "sandwich", "mixed")


def random_config(layer_names: list[str], modes: list, gen: random.Random) -> BitConfig:
    """Every quantized layer gets a weight bit-width drawn from those of ``modes`` and an
    activation bit-width drawn from theirs."""
    w_bits, a_bits = weight_bits(modes), act_bits(modes)
    return BitConfig(LayerBits(w_bits[0], a_bits[0]),
                     tuple((n, LayerBits(gen.choice(w_bits), gen.choice(a_bits))) for n in layer_names))


def sample_modes(modes_desc: list[int], how: str, k: int, gen: random.Random) -> list[int]:
    """``all`` and ``mixed``: every mode. ``sandwich``: highest + lowest + k random others
    (highest first). (``mixed`` adds per-layer configurations after these: the trainer.)"""
    if how in ("all", "mixed") or len(modes_desc) <= 2:
        return list(modes_desc)
    middle = modes_desc[1:-1]
    picked = set(gen.sample(middle, min(k, len(middle))))
    return [modes_desc[0]] + [m for m in middle if m in picked] + [modes_desc[-1]]


def modes_per_step(n_modes: int, how: str, k: int, mixed_k: int) -> int:
    """How many forward/backward passes one step makes: what :func:`sample_modes` returns,
    plus the trainer's ``mixed_k`` per-layer configurations with ``mixed``."""
    if how == "sandwich" and n_modes > 2:
        return 2 + min(k, n_modes - 2)
    return n_modes + (mixed_k if how == "mixed" else 0)


def mode_sets(modes_desc: list[int], how: str, k: int) -> int:
    """How many different mode lists :func:`sample_modes` can return (graphs to compile)."""
    if how in ("all", "mixed") or len(modes_desc) <= 2:
        return 1
    return math.comb(len(modes_desc) - 2, min(k, len(modes_desc) - 2))


class ModeTimer:
    """Seconds spent in each mode's forward+backward, without host syncs in the step.

    CPU: wall clock around each mode. CUDA: a pair of events per mode and step, read once
    at the end of the epoch (after the epoch's own sync), so timing never stalls the GPU.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[int, float] = {}
        self._pending: list[tuple[int, object, object]] = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, mode: int, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((mode, started, end))
        else:
            self.seconds[mode] = self.seconds.get(mode, 0.0) + time.perf_counter() - started

    def totals(self) -> dict[int, float]:
        if self._pending:
            self._pending[-1][2].synchronize()
            for mode, a, b in self._pending:
                self.seconds[mode] = self.seconds.get(mode, 0.0) + a.elapsed_time(b) / 1000
            self._pending.clear()
        return self.seconds


@dataclass
class EpochStats:
    """Per-mode training sums of one epoch, kept on the device until the epoch ends."""
    loss: dict = field(default_factory=dict)
    correct: dict = field(default_factory=dict)
    correct5: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)

    def add(self, mode: int, ce: torch.Tensor, top1_hits, top5_hits, n: int) -> None:
        """Accumulate on the device (no host sync): summed CE, hits and images of ``mode``."""
        self.loss[mode] = self.loss.get(mode, 0) + ce * n
        self.correct[mode] = self.correct.get(mode, 0) + top1_hits
        self.correct5[mode] = self.correct5.get(mode, 0) + top5_hits
        self.seen[mode] = self.seen.get(mode, 0) + n

    def mean_loss(self, mode: int) -> float:
        return (self.loss[mode] / self.seen[mode]).item()


def mode_losses(model, x, y, modes, loss_fn: QuantizableLoss, distill: bool, forward: Callable | None = None,
                amp_ctx=contextlib.nullcontext, backward: Callable | None = None,
                timer: ModeTimer | None = None, batched: bool = False):
    """Forward and loss of every mode in ``modes`` (highest first) on one batch.

    Returns ``(summed loss, {mode: (ce, top-1 hits, top-5 hits)})``, all detached but the
    loss. ``backward`` given: it is called on each mode's loss right after that mode's
    forward (only one graph alive at a time) and the summed loss is ``None``; the top
    mode's backward waits for the lower modes only when its loss depends on them
    (``loss.fp_weight``). ``distill=False``: plain CE per mode (dedicated runs).
    ``forward`` defaults to ``model`` (a per-mode compiled model is passed here).
    ``batched``: all modes in one forward, their summed loss in one backward (no timer:
    per-mode time is not separable).
    """
    forward = model if forward is None else forward  # bool() of a compiled module calls len()
    if batched:
        with mode_batch(model, modes), amp_ctx():
            logits = split_slots(forward(x), len(modes))
        total, per_mode = losses_from_logits(logits, y, modes, loss_fn, distill)
        if backward is not None:
            backward(total)
            total = None
        return total, per_mode

    def one_mode_after_another():
        for m in modes:
            apply_bits(model, m)  # a bit mode, or a per-layer configuration (mode_sampling=mixed)
            with amp_ctx():
                yield forward(x)
    return _losses(one_mode_after_another(), y, modes, loss_fn, distill, backward, timer)


def losses_from_logits(logits, y, modes, loss_fn: QuantizableLoss, distill: bool):
    """:func:`mode_losses` of logits already computed (``logits[i]`` of ``modes[i]``, e.g.
    the slots of a mode batch or of one run in a pack): ``(summed loss, per-mode stats)``."""
    return _losses(iter(logits), y, modes, loss_fn, distill, None, None)


def _losses(logits_of_modes, y, modes, loss_fn, distill, backward, timer):
    """The loss of each mode as its logits arrive (``logits_of_modes`` yields them in the
    order of ``modes``); see :func:`mode_losses`."""
    scale = loss_fn.mode_scale(len(modes))
    top_waits = distill and bool(loss_fn.consistency and loss_fn.fp_weight) and len(modes) > 1
    logits_by_mode, per_mode, total, top = {}, {}, None, None
    for m in modes:
        started = timer.start() if timer is not None else None
        logits = next(logits_of_modes)
        teacher = loss_fn.teacher(m, modes, logits_by_mode) if distill else None
        loss, ce = loss_fn.mode_loss(logits, y, teacher, m == modes[0])
        loss = loss * scale if scale != 1 else loss
        if top_waits and m == modes[0]:
            top = (loss, logits)  # finished after the lower modes, which it learns from
        elif backward is not None:
            backward(loss)
        else:
            total = loss if total is None else total + loss
        logits_by_mode[m] = logits.detach()
        per_mode[m] = (ce.detach(), *topk_correct(logits_by_mode[m], y, 5))
        if timer is not None:
            timer.stop(m, started)
    if top is not None:
        extra = loss_fn.top_term(top[1], [logits_by_mode[m] for m in modes[1:]])
        loss = top[0] + (extra * scale if extra is not None else 0)
        if backward is not None:
            backward(loss)
        else:
            total = loss if total is None else total + loss
    return total, per_mode
