"""Evaluate a trained model in any set of bit modes, with BN re-calibration.

Modes the checkpoint was trained in are evaluated as they are. A mode it never trained
gets its Bit-Specific BN (and PACT clip level) initialised from the nearest trained
mode, then — required — its BN statistics re-estimated from N training batches
(slimmable networks' post-hoc calibration: reset, cumulative average, no gradients).
A shared-BN checkpoint is loaded into per-mode BNs so each mode can be calibrated alone.
"""
from __future__ import annotations

import contextlib
import re

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ..data import build_data
from ..models import build_model
from ..quant import BitModeError, BitSpecificBN, QuantSpec, set_bit_mode
from .checkpoint import safe_load
from .device import resolve_device
from .step import topk_correct

_MODE_KEY = re.compile(r"\.(bn|alpha|step)\.(\d+|shared)(\.|$)")


@torch.no_grad()
def evaluate(model, loader, modes, amp_ctx=contextlib.nullcontext, dist_ctx=None) -> dict:
    """Top-1/top-5/loss per mode; each batch is read once and run through every mode.
    Under torchrun the counts are summed over ranks (``dist_ctx``)."""
    model.eval()
    device = next(model.parameters()).device
    sums = {m: torch.zeros(4, device=device, dtype=torch.float64) for m in modes}  # loss, top1, top5, n
    for x, y in loader:
        for m in modes:
            set_bit_mode(model, m)
            with amp_ctx():
                logits = model(x)
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


def _nearest(mode: int, trained: list[int]) -> int:
    return min(trained, key=lambda t: (abs(t - mode), -t))


def expand_state(state: dict, trained: list[int], modes: list[int]) -> dict:
    """Map a checkpoint's per-mode (or shared) entries onto ``modes``."""
    out = {}
    for k, v in state.items():
        if k.startswith("_qdnn."):
            continue
        m = _MODE_KEY.search(k)
        if not m:
            out[k] = v
            continue
        src = m.group(2)
        for mode in modes:
            if src == "shared":
                take = True
            else:
                take = int(src) == (mode if mode in trained else _nearest(mode, trained))
            if take:
                new_key = k[:m.start(2)] + str(mode) + k[m.end(2):]
                if m.group(1) == "step" and mode not in trained:
                    v = torch.zeros_like(v)  # LSQ: re-initialise the step from data
                out[new_key] = v
    return out


@torch.no_grad()
def calibrate_bn(model, loader, mode: int, batches: int) -> int:
    """Re-estimate the running statistics of ``mode``'s BNs from ``batches`` training batches."""
    set_bit_mode(model, mode)
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


def evaluate_checkpoint(ckpt_path, bits: list[int] | None, calibrate: int, overrides: list[str] = (),
                        device_name: str = "auto") -> tuple[list[dict], dict]:
    """Rows of (mode, top-1, top-5, loss, trained, calibrated) for a checkpoint; ``overrides``
    (``key=value``, e.g. ``data.root=...``) change the run's saved config and are
    validated as ``qdnn train`` validates its own."""
    from ..config import apply_overrides

    ck = safe_load(ckpt_path)
    if "model" not in ck or "config" not in ck:
        raise BitModeError(f"{ckpt_path} is not a qdnn training checkpoint (no model/config entries)")
    cfg = apply_overrides(OmegaConf.create(ck["config"]), list(overrides))
    trained = sorted(int(b) for b in ck["model"]["_qdnn.bit_modes"].tolist())
    modes = sorted(set(bits or trained))
    untrained = [m for m in modes if m not in trained]
    if untrained and calibrate <= 0:
        raise BitModeError(
            f"bit modes {untrained} were never trained in this model (trained: {trained}); "
            "pass --calibrate-bn N to re-estimate their BN statistics from N training batches"
        )
    q = cfg.quant
    spec = QuantSpec(tuple(sorted(set(modes) | set(trained))), q.weight, q.act, True, bool(q.quantize_first_last),
                     bool(q.quantize_shortcut), q.get("weight_scale", "none"), bool(q.get("weight_max_grad", False)))
    device = resolve_device(device_name)
    model = build_model(ck["model_name"], spec, int(ck["num_classes"]), int(ck["in_channels"]),
                        **dict(cfg.model.get("kwargs") or {}))
    state = expand_state(ck["model"], trained, list(spec.modes))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BitModeError(f"{ckpt_path} does not fit the {ck['model_name']} it names "
                           f"(missing {missing[:1]}, unexpected {unexpected[:1]})")
    model.to(device).eval()
    t = cfg.trainer
    data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), device, int(cfg.seed))
    if data.num_classes != int(ck["num_classes"]):
        raise BitModeError(f"data has {data.num_classes} classes but the checkpoint was trained on {ck['num_classes']}")
    calibrated = {}
    for m in untrained:
        calibrated[m] = calibrate_bn(model, data.train, m, calibrate)
    results = evaluate(model, data.val, modes)
    rows = []
    for m in sorted(modes, reverse=True):
        rows.append({"mode": m, "top1": round(results[m]["top1"], 4), "top5": round(results[m]["top5"], 4),
                     "loss": round(results[m]["loss"], 6), "trained": m in trained,
                     "calibrated": m in calibrated, "calibration_batches": calibrated.get(m, 0)})
    return rows, {"trained": trained, "epoch": ck.get("epoch")}
