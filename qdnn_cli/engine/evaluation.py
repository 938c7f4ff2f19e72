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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ..data import build_data
from ..models import build_model
from ..quant import BitConfig, BitModeError, BitSpecificBN, QuantSpec
from ..quant.calibrate import mark_calibrated
from ..quant.mixed import apply_bits, check_config
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
            apply_bits(model, m)
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


def quant_spec(cfg, modes: tuple[int, ...] | None = None, bit_specific_bn: bool | None = None) -> QuantSpec:
    """The QuantSpec of a run's ``quant`` config (its own modes unless ``modes`` is given)."""
    q = cfg.quant
    return QuantSpec(tuple(int(b) for b in (modes or q.bits)), q.weight, q.act,
                     bool(q.bit_specific_bn if bit_specific_bn is None else bit_specific_bn),
                     bool(q.quantize_first_last), bool(q.quantize_shortcut), q.get("weight_scale", "none"),
                     bool(q.get("weight_max_grad", False)))


@dataclass
class LoadedRun:
    model: torch.nn.Module
    cfg: object          # the run's config, with overrides applied
    checkpoint: dict
    trained: list[int]   # modes the checkpoint trained
    device: torch.device


def load_checkpoint_model(ckpt_path, modes: set[int], overrides: list[str] = (),
                          device_name: str = "auto") -> LoadedRun:
    """The checkpoint's model, built for its trained modes plus ``modes``; a mode it never
    trained starts from the nearest trained mode's BN (re-calibrate before trusting it)."""
    from ..config import apply_overrides

    ck = safe_load(ckpt_path)
    if "model" not in ck or "config" not in ck:
        raise BitModeError(f"{ckpt_path} is not a qdnn training checkpoint (no model/config entries)")
    cfg = apply_overrides(OmegaConf.create(ck["config"]), list(overrides))
    trained = sorted(int(b) for b in ck["model"]["_qdnn.bit_modes"].tolist())
    # per-mode BNs even for a shared-BN run: expand_state copies the shared one into each
    spec = quant_spec(cfg, tuple(sorted(set(modes) | set(trained))), bit_specific_bn=True)
    device = resolve_device(device_name)
    model = build_model(ck["model_name"], spec, int(ck["num_classes"]), int(ck["in_channels"]),
                        **dict(cfg.model.get("kwargs") or {}))
    state = expand_state(ck["model"], trained, list(spec.modes))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BitModeError(f"{ckpt_path} does not fit the {ck['model_name']} it names "
                           f"(missing {missing[:1]}, unexpected {unexpected[:1]})")
    mark_calibrated(model)  # trained LSQ steps are set; untrained ones initialise on calibration
    return LoadedRun(model.to(device).eval(), cfg, ck, trained, device)


def run_costs(run: LoadedRun, setting) -> dict:
    """Size (MB) and BOPs of a bit mode or configuration of a loaded run's model."""
    from ..cost import config_cost, layer_costs

    ck = run.checkpoint
    key = "_costs"
    if key not in run.__dict__:
        run.__dict__[key] = layer_costs(dict(run.cfg.model), dict(run.cfg.quant), int(ck["num_classes"]),
                                        int(ck["in_channels"]), int(ck["image_size"]))
    layers, other = run.__dict__[key]
    cfg = setting if isinstance(setting, BitConfig) else BitConfig.uniform(int(setting))
    return config_cost(layers, other, cfg)


def evaluate_checkpoint(ckpt_path, bits: list[int] | None, calibrate: int, overrides: list[str] = (),
                        device_name: str = "auto", config: BitConfig | None = None,
                        config_name: str = "config") -> tuple[list[dict], dict]:
    """Rows of (mode, top-1, top-5, loss, size, BOPs, trained, calibrated) for a checkpoint:
    its bit modes (or ``bits``) and, with ``config``, a per-layer configuration, whose BN
    statistics are re-estimated from ``calibrate`` training batches when that is given.
    ``overrides`` (``key=value``, e.g. ``data.root=...``) change the run's saved config and
    are validated as ``qdnn train`` validates its own."""
    extra = set(bits or []) | (config.all_bits() if config is not None else set())
    run = load_checkpoint_model(ckpt_path, extra, overrides, device_name)
    model, cfg, trained = run.model, run.cfg, run.trained
    modes = sorted(set(bits or trained))  # with a configuration too: the uniform modes beside it
    untrained = sorted(b for b in extra if b not in trained)
    if untrained and calibrate <= 0:
        raise BitModeError(
            f"bit modes {untrained} were never trained in this model (trained: {trained}); "
            "pass --calibrate-bn N to re-estimate their BN statistics from N training batches"
        )
    if config is not None:
        check_config(model, config)
    t = cfg.trainer
    data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), run.device, int(cfg.seed))
    if data.num_classes != int(run.checkpoint["num_classes"]):
        raise BitModeError(f"data has {data.num_classes} classes but the checkpoint was trained on "
                           f"{run.checkpoint['num_classes']}")
    calibrated = {m: calibrate_bn(model, data.train, m, calibrate) for m in modes if m not in trained}
    results = evaluate(model, data.val, modes)
    rows = []
    for m in sorted(modes, reverse=True):
        rows.append(_row(m, results[m], run_costs(run, m), m in trained, calibrated.get(m)))
    if config is not None:
        before = bn_state(model)
        seen = calibrate_bn(model, data.train, config, calibrate) if calibrate > 0 else None
        result = evaluate(model, data.val, [config])[config]
        load_bn_state(model, before)
        rows.append(_row(config_name, result, run_costs(run, config), not untrained, seen))
    return rows, {"trained": trained, "epoch": run.checkpoint.get("epoch")}


def _row(mode, result: dict, cost: dict, trained: bool, calibration_batches) -> dict:
    return {"mode": mode, "top1": round(result["top1"], 4), "top5": round(result["top5"], 4),
            "loss": round(result["loss"], 6), "size_mb": round(cost["size_mb"], 5),
            "gbops": round(cost["bops"] / 1e9, 5), "trained": trained,
            "calibrated": calibration_batches is not None, "calibration_batches": calibration_batches or 0}


def bn_state(model) -> dict:
    """Every BatchNorm's statistics and affine parameters (to undo a calibration)."""
    return {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}


def load_bn_state(model, state: dict) -> None:
    model.load_state_dict(state, strict=False)
