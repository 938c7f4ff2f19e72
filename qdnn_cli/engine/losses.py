"""The quantizable loss (METHOD.md):

    L = CE(z_32, y) + Σ_{b<32} [ α·CE(z_b, y) + λ·T²·KL(softmax(z_t/T) ‖ softmax(z_b/T)) ]

with teacher t = full precision (``target="fp"``) or the next higher trained mode
(``target="next"``), always detached. ``consistency=False`` sets λ = 0 (joint CE only).
The per-mode terms are returned separately so the engine can call backward once per
mode and free each graph early; their sum is exactly L because teachers are detached.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TARGETS = ("fp", "next")


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


@dataclass(frozen=True)
class QuantizableLoss:
    consistency: bool = True
    target: str = "fp"
    weight: float = 1.0        # λ
    ce_weight: float = 1.0     # α, for modes below the top one
    temperature: float = 1.0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"loss.target={self.target!r} is unknown: choose fp or next")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")

    def teacher_mode(self, mode: int, modes_desc: list[int]) -> int | None:
        """Which mode teaches ``mode`` in a step over ``modes_desc`` (highest first)."""
        if not self.consistency or mode == modes_desc[0]:
            return None
        if self.target == "fp":
            return modes_desc[0]
        return modes_desc[modes_desc.index(mode) - 1]

    def mode_loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                  is_top: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss term of this mode, its plain CE) — CE for logging."""
        ce = F.cross_entropy(logits.float(), labels)
        if is_top:
            return ce, ce
        loss = self.ce_weight * ce
        if teacher is not None and self.weight:
            loss = loss + self.weight * consistency_kl(logits, teacher, self.temperature)
        return loss, ce

    def total(self, logits_by_mode: dict[int, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """L for a dict of logits (all modes at once) — for tests and analysis."""
        modes_desc = sorted(logits_by_mode, reverse=True)
        total = logits_by_mode[modes_desc[0]].new_zeros(())
        for m in modes_desc:
            t = self.teacher_mode(m, modes_desc)
            teacher = logits_by_mode[t] if t is not None else None
            total = total + self.mode_loss(logits_by_mode[m], labels, teacher, m == modes_desc[0])[0]
        return total
