"""The quantizable loss (docs/method.md):

    L = CE(z_32, y) + Σ_{b<32} [ α·CE(z_b, y) + λ·T²·KL(softmax(z_t/T) ‖ softmax(z_b/T)) ]
        [ + μ·T²·KL(mean_{b<32} softmax(z_b/T) ‖ softmax(z_32/T)) ]

The teacher t of mode b is full precision (``target="fp"``), the next higher mode
(``"next"``), or the average prediction of every higher mode (``"ensemble"``); teachers
are always detached. ``consistency=False`` sets λ = 0 (joint CE only). μ
(``fp_weight``, off by default) lets the full-precision mode learn from the lower modes
too — consistency "ranging from low-bit mode to 32-bit mode" read both ways.
``reduction="mean"`` divides the sum by the number of modes in the step, so a joint
step moves the shared weights as far as one model's step would.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..quant.modes import sort_modes

TARGETS = ("fp", "next", "ensemble")
REDUCTIONS = ("sum", "mean")


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def ensemble_logits(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Logits whose softmax at temperature T is the mean of the given predictions at T."""
    probs = torch.stack([F.softmax(z.detach().float() / temperature, dim=1) for z in logits]).mean(0)
    return temperature * torch.log(probs.clamp_min(1e-12))


@dataclass(frozen=True)
class QuantizableLoss:
    consistency: bool = True
    target: str = "fp"
    weight: float = 1.0        # λ
    ce_weight: float = 1.0     # α, for modes below the top one
    temperature: float = 1.0
    reduction: str = "sum"
    warmup_epochs: float = 0.0  # λ grows linearly from 0 over these epochs (no distillation from an untrained teacher)
    fp_weight: float = 0.0     # μ: consistency of the top mode towards the lower modes' mean prediction
    top_weight: float = 1.0    # weight of the top (full-precision) mode's CE: its share of the shared weights' step

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"loss.target={self.target!r} is unknown: choose one of {', '.join(TARGETS)}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"loss.reduction={self.reduction!r} is unknown: choose sum or mean")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.top_weight <= 0:
            raise ValueError(f"loss.top_weight must be > 0, got {self.top_weight}")

    @classmethod
    def from_config(cls, loss) -> "QuantizableLoss":
        return cls(bool(loss.consistency), loss.target, float(loss.weight), float(loss.ce_weight),
                   float(loss.temperature), loss.get("reduction", "sum"), float(loss.get("warmup_epochs", 0)),
                   float(loss.get("fp_weight", 0)), float(loss.get("top_weight", 1)))

    def at_epoch(self, epoch: int) -> "QuantizableLoss":
        """The loss of epoch ``epoch`` (0-based): λ and μ ramped over ``warmup_epochs``."""
        if not self.warmup_epochs:
            return self
        ramp = min(1.0, epoch / self.warmup_epochs)
        return dataclasses.replace(self, weight=self.weight * ramp, fp_weight=self.fp_weight * ramp, warmup_epochs=0.0)

    def mode_scale(self, n_modes: int) -> float:
        return 1.0 / n_modes if self.reduction == "mean" else 1.0

    def teacher(self, mode: int, modes_desc, logits_by_mode: dict) -> torch.Tensor | None:
        """Detached teacher logits for ``mode`` in a step over ``modes_desc`` (highest first)."""
        if not self.consistency or not self.weight or mode == modes_desc[0]:
            return None
        i = list(modes_desc).index(mode)
        if self.target == "fp" or not isinstance(mode, (int, str)):  # a mixed configuration learns from the top mode
            return logits_by_mode[modes_desc[0]]
        if self.target == "next":
            return logits_by_mode[modes_desc[i - 1]]
        return ensemble_logits([logits_by_mode[m] for m in modes_desc[:i]], self.temperature)

    def mode_loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                  is_top: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss term of this mode, its plain CE) — CE for logging."""
        ce = F.cross_entropy(logits.float(), labels)
        if is_top:
            return (ce if self.top_weight == 1 else self.top_weight * ce), ce
        loss = self.ce_weight * ce
        if teacher is not None and self.weight:
            loss = loss + self.weight * consistency_kl(logits, teacher, self.temperature)
        return loss, ce

    def top_term(self, top_logits: torch.Tensor, lower_logits: list[torch.Tensor]) -> torch.Tensor | None:
        """μ·T²·KL(mean of the lower modes' predictions ‖ the top mode's), or None when off."""
        if not (self.consistency and self.fp_weight and lower_logits):
            return None
        teacher = ensemble_logits(lower_logits, self.temperature)
        return self.fp_weight * consistency_kl(top_logits, teacher, self.temperature)

    def total(self, logits_by_mode: dict[int, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """L for a dict of logits (all modes at once) — for tests and analysis."""
        modes_desc = sort_modes(logits_by_mode, descending=True)
        detached = {m: z.detach() for m, z in logits_by_mode.items()}
        total = logits_by_mode[modes_desc[0]].new_zeros(())
        for m in modes_desc:
            teacher = self.teacher(m, modes_desc, detached)
            total = total + self.mode_loss(logits_by_mode[m], labels, teacher, m == modes_desc[0])[0]
        extra = self.top_term(logits_by_mode[modes_desc[0]], [detached[m] for m in modes_desc[1:]])
        if extra is not None:
            total = total + extra
        return total * self.mode_scale(len(modes_desc))
