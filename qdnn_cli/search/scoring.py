"""How a configuration is judged: KL divergence from the full-precision mode's predictions, or top-1, on the same images; paired comparisons (McNemar)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F


METRICS = ("kl", "top1")


@dataclass
class Scores:
    top1: float
    top5: float
    kl: float
    hits: torch.Tensor | None = None  # per image: top-1 right (bool), when asked for


def paired_comparison(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two settings' per-image top-1 hits on the same images: the difference in points,
    the images only ``a`` (only ``b``) gets right, and the exact two-sided McNemar p-value
    (a binomial test on those discordant images)."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"delta_top1": 100 * (only_a - only_b) / max(1, a.numel()), "only_searched": only_a,
            "only_uniform": only_b, "p_value": p}


@torch.no_grad()
def reference_logprobs(model, loader, mode) -> list[torch.Tensor]:
    """Log-probabilities of ``mode`` (the full-precision one) on every batch of ``loader``
    (which must yield the same batches in the same order each time)."""
    from ..quant.mixed import apply_bits

    model.eval()
    apply_bits(model, mode)
    return [F.log_softmax(model(x).float(), dim=1) for x, _ in loader]


@torch.no_grad()
def score_against(model, loader, setting, reference: list[torch.Tensor], keep_hits: bool = False) -> Scores:
    """Top-1/top-5 % and the mean KL(reference ‖ model) of ``setting`` on ``loader``
    (and which images it gets right, with ``keep_hits``)."""
    from ..engine.step import topk_correct
    from ..quant.mixed import apply_bits

    model.eval()
    apply_bits(model, setting)
    top1 = top5 = kl = 0.0
    n = 0
    hits = []
    for (x, y), ref in zip(loader, reference, strict=True):
        logp = F.log_softmax(model(x).float(), dim=1)
        t1, t5 = topk_correct(logp, y, 5)
        top1, top5 = top1 + t1.item(), top5 + t5.item()
        kl += F.kl_div(logp, ref, log_target=True, reduction="sum").item()
        n += y.numel()
        if keep_hits:
            hits.append((logp.argmax(1) == y).cpu())
    n = max(n, 1)
    return Scores(100 * top1 / n, 100 * top5 / n, kl / n, torch.cat(hits) if keep_hits else None)


def _val(r: Scores) -> dict:
    return {"top1": r.top1, "top5": r.top5, "kl": r.kl}
