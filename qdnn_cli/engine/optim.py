"""Optimizer and learning-rate schedule, each a registry: adding one is one entry here.

Weight decay applies to conv/linear weights only (not BN, biases, clip levels or steps).
The schedule moves per epoch or per optimizer step (``sched.interval``, as timm and most
current recipes do); a linear warm-up comes first (``sched.warmup_epochs``, fractional
allowed, or ``sched.warmup_steps``), then the decay over the rest of training.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda groups, lr, o: torch.optim.SGD(groups, lr=lr, momentum=float(o.momentum),
                                                 nesterov=bool(o.nesterov)),
    "adam": lambda groups, lr, o: torch.optim.Adam(groups, lr=lr),
    "adamw": lambda groups, lr, o: torch.optim.AdamW(groups, lr=lr),
}

# multiple of the base lr at progress t in [0, 1) of the decay phase (after warm-up);
# ``epoch`` (fractional under per-step schedules) is for milestone schedules
SCHEDULES: dict[str, Callable] = {
    "cosine": lambda t, epoch, s: 0.5 * (1 + math.cos(math.pi * t)),
    # one-cycle: warm-up over sched.pct_start of all training, then cosine to zero
    "onecycle": lambda t, epoch, s: 0.5 * (1 + math.cos(math.pi * t)),
    "step": lambda t, epoch, s: float(s.gamma) ** sum(epoch >= m for m in s.milestones),
    "constant": lambda t, epoch, s: 1.0,
}
INTERVALS = ("epoch", "step")


def build_optimizer(model: torch.nn.Module, o, lr: float) -> torch.optim.Optimizer:
    if o.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={o.name!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[o.name](groups, lr, o)


def lr_factor(s, epochs: int, steps_per_epoch: int = 1) -> Callable[[int], float]:
    """Schedule position -> multiple of the base lr. The position counts epochs
    (``interval=epoch``) or optimizer steps (``interval=step``)."""
    if s.name not in SCHEDULES:
        raise ValueError(f"sched.name={s.name!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    interval = s.get("interval", "epoch")
    if interval not in INTERVALS:
        raise ValueError(f"sched.interval={interval!r} is unknown: choose epoch or step")
    per_unit = steps_per_epoch if interval == "step" else 1  # positions per epoch
    total = epochs * per_unit
    if s.name == "onecycle":
        warm = float(s.get("pct_start", 0.15)) * total
    elif s.get("warmup_steps"):
        if interval != "step":
            raise ValueError("sched.warmup_steps needs sched.interval=step (or use sched.warmup_epochs)")
        warm = float(s.warmup_steps)
    else:
        warm = float(s.get("warmup_epochs", 0)) * per_unit
    decay = SCHEDULES[s.name]

    def factor(pos: int) -> float:
        if pos < warm:  # linear from ~0; the first position already gets a non-zero lr
            return (pos + 1) / (math.ceil(warm) + 1)
        return decay((pos - warm) / max(1.0, total - warm), pos / per_unit, s)

    return factor


def build_scheduler(opt: torch.optim.Optimizer, s, epochs: int, steps_per_epoch: int = 1):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(s, epochs, steps_per_epoch))
