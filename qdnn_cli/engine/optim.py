"""Optimizer and learning-rate schedule, each a registry: adding one is one entry here.

Weight decay applies to conv/linear weights only (not BN, biases, clip levels or steps).
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

# factor of the base lr at progress t in [0, 1) after warm-up, given the epoch index
SCHEDULES: dict[str, Callable] = {
    "cosine": lambda t, epoch, s: 0.5 * (1 + math.cos(math.pi * t)),
    "step": lambda t, epoch, s: float(s.gamma) ** sum(epoch >= m for m in s.milestones),
    "constant": lambda t, epoch, s: 1.0,
}


def build_optimizer(model: torch.nn.Module, o, lr: float) -> torch.optim.Optimizer:
    if o.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={o.name!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[o.name](groups, lr, o)


def lr_factor(s, epochs: int) -> Callable[[int], float]:
    """Epoch -> multiple of the base lr: linear warm-up over ``warmup_epochs``, then the schedule."""
    if s.name not in SCHEDULES:
        raise ValueError(f"sched.name={s.name!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    warm = int(s.get("warmup_epochs", 0))
    decay = SCHEDULES[s.name]

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        return decay((epoch - warm) / max(1, epochs - warm), epoch, s)

    return factor


def build_scheduler(opt: torch.optim.Optimizer, s, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(s, epochs))
