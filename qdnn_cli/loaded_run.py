"""A trained run loaded back: its model for any bit modes, costs, and ``qdnn eval``.

Modes the checkpoint was trained in are evaluated as they are. A mode it never trained
gets its Bit-Specific BN (and PACT clip level) initialised from the nearest trained
mode, then — required — its BN statistics re-estimated from N training batches
(:func:`~qdnn_cli.engine.evaluation.calibrate_bn`). A shared-BN checkpoint is loaded
into per-mode BNs so each mode can be calibrated alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from .config import apply_overrides
from .cost import config_cost, layer_costs
from .data import build_data
from .engine.checkpoint import safe_load
from .engine.device import resolve_device
from .engine.evaluation import bn_state, calibrate_bn, evaluate, load_bn_state
from .models import build_model
from .quant import BitConfig, BitModeError, QuantSpec, model_modes, parse_mode, sort_modes
from .quant.calibrate import mark_calibrated
from .quant.mixed import check_config
from .quant.modes import act_bits, mode_from_code, weight_bits
from .quant.transfer import expand_state

@dataclass
class LoadedRun:
    model: torch.nn.Module
    cfg: object          # the run's config, with overrides applied
    checkpoint: dict
    trained: list        # modes the checkpoint trained, in cost order
    device: torch.device


def load_checkpoint_model(ckpt_path, modes: set, overrides: list[str] = (),
                          device_name: str = "auto", config: BitConfig | None = None) -> LoadedRun:
    """The checkpoint's model, built for its trained modes plus ``modes`` (plus what
    ``config`` needs: :func:`config_extra_modes`); a mode it never trained starts from the
    nearest trained mode's BN (re-calibrate before trusting it)."""
    ck = safe_load(ckpt_path)
    if "model" not in ck or "config" not in ck:
        raise BitModeError(f"{ckpt_path} is not a qdnn training checkpoint (no model/config entries)")
    cfg = apply_overrides(OmegaConf.create(ck["config"]), list(overrides))
    trained = sort_modes(mode_from_code(c) for c in ck["model"]["_qdnn.bit_modes"].tolist())
    modes = set(modes) | (config_extra_modes(config, trained) if config is not None else set())
    # per-mode BNs even for a shared-BN run: expand_state copies the shared one into each
    spec = QuantSpec.from_config(cfg.quant, tuple(sort_modes(set(modes) | set(trained))), bit_specific_bn=True)
    # (a private-statistics run stays one: from_config keeps its shared γ, β)
    device = resolve_device(device_name)
    model = build_model(ck["model_name"], spec, int(ck["num_classes"]), int(ck["in_channels"]),
                        **dict(cfg.model.get("kwargs") or {}))
    state = expand_state(ck["model"], model.state_dict().keys())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BitModeError(f"{ckpt_path} does not fit the {ck['model_name']} it names "
                           f"(missing {missing[:1]}, unexpected {unexpected[:1]})")
    mark_calibrated(model)  # trained LSQ steps are set; untrained ones initialise on calibration
    return LoadedRun(model.to(device).eval(), cfg, ck, trained, device)


def run_costs(run: LoadedRun, setting) -> dict:
    """Size (MB) and BOPs of a bit mode or configuration of a loaded run's model."""
    ck = run.checkpoint
    key = "_costs"
    if key not in run.__dict__:
        run.__dict__[key] = layer_costs(dict(run.cfg.model), dict(run.cfg.quant), int(ck["num_classes"]),
                                        int(ck["in_channels"]), int(ck["image_size"]))
    layers, other = run.__dict__[key]
    cfg = setting if isinstance(setting, BitConfig) else BitConfig.uniform(setting)
    return config_cost(layers, other, cfg)


def config_extra_modes(config: BitConfig, trained) -> set:
    """Uniform modes to add to a model so it has the quantizer bit-widths ``config`` uses
    that no trained mode has (their BN statistics need re-calibration)."""
    return (config.weight_bits() - set(weight_bits(trained))) | (config.act_bits() - set(act_bits(trained)))


def evaluate_checkpoint(ckpt_path, bits: list | None, calibrate: int, overrides: list[str] = (),
                        device_name: str = "auto", config: BitConfig | None = None,
                        config_name: str = "config", recalibrate_trained: bool = False,
                        split: str = "val") -> tuple[list[dict], dict]:
    """Rows of (mode, top-1, top-5, loss, size, BOPs, trained, calibrated) for a checkpoint:
    its bit modes (or ``bits``) and, with ``config``, a per-layer configuration, whose BN
    statistics are re-estimated from ``calibrate`` training batches when that is given.
    Untrained modes are always re-estimated; trained ones too with ``recalibrate_trained``
    (one set of statistics per mode for a shared-BN model, or trained against re-estimated
    BN). ``overrides`` (``key=value``, e.g. ``data.root=...``) change the run's saved config
    and are validated as ``qdnn train`` validates its own. ``split``: ``val`` (the validation
    split) or ``train`` (the images the run trained on, un-augmented: the other side of the
    train/validation gap)."""
    if calibrate < 0:
        raise ValueError(f"--calibrate-bn {calibrate}: give a number of training batches >= 0 (0: no re-estimation)")
    if split not in ("val", "train"):
        raise ValueError(f"--split {split!r}: choose val or train")
    bits = [parse_mode(b) for b in bits] if bits else None
    run = load_checkpoint_model(ckpt_path, set(bits or []), overrides, device_name, config)
    model, cfg, trained = run.model, run.cfg, run.trained
    modes = sort_modes(set(bits or trained))  # with a configuration too: the modes beside it
    untrained = [m for m in model_modes(model) if m not in trained]
    if recalibrate_trained and calibrate <= 0:
        raise BitModeError("--recalibrate-trained re-estimates BN from training batches: give --calibrate-bn N too")
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
    # every mode has a BN of its own here (a shared-BN run's is copied into each at loading),
    # so each mode's statistics are re-estimated without touching another's
    calibrated = {m: calibrate_bn(model, data.train, m, calibrate) for m in modes
                  if recalibrate_trained or m not in trained}
    images = data.val
    if split == "train":
        from .data import build_trained_images

        images = build_trained_images(cfg.data, int(t.eval_batch_size), run.device, int(cfg.seed))
    results = evaluate(model, images, modes)
    rows = []
    for m in sort_modes(modes, descending=True):
        rows.append(_row(m, results[m], run_costs(run, m), m in trained, calibrated.get(m)))
    if config is not None:
        before = bn_state(model)
        seen = calibrate_bn(model, data.train, config, calibrate) if calibrate > 0 else None
        result = evaluate(model, images, [config])[config]
        load_bn_state(model, before)
        rows.append(_row(config_name, result, run_costs(run, config), not untrained, seen))
    for row in rows:
        row["split"] = split
    return rows, {"trained": trained, "epoch": run.checkpoint.get("epoch")}


def _row(mode, result: dict, cost: dict, trained: bool, calibration_batches) -> dict:
    return {"mode": mode, "top1": round(result["top1"], 4), "top5": round(result["top5"], 4),
            "loss": round(result["loss"], 6), "size_mb": round(cost["size_mb"], 5),
            "gbops": round(cost["bops"] / 1e9, 5), "trained": trained,
            "calibrated": calibration_batches is not None, "calibration_batches": calibration_batches or 0}


