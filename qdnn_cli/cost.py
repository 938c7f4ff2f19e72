"""Model size and bit operations (BOPs) of a bit configuration, per layer and in total.

BOPs of a layer = MACs × weight bits × activation bits; layers kept in full precision
(first conv, classifier, shortcuts by default), and the input side of a layer whose
input is not quantized, count at 32 bits. Size counts each conv/linear weight at its
weight bits and everything else (biases, one mode's BN, clip levels) at 32 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import build_model
from .quant import BitConfig, BitSpecificBN, QConv2d, QLinear, QuantSpec


@dataclass(frozen=True)
class LayerCost:
    name: str
    quantized: bool        # its bits follow the configuration
    quantize_input: bool
    macs: int
    weights: int


def _macs(model, in_channels: int, image_size: int) -> dict:
    macs = {}

    def hook(mod, inp, out):
        if isinstance(mod, QConv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs[mod] = out.numel() * (mod.in_channels // mod.groups) * k
        else:
            macs[mod] = mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (QConv2d, QLinear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    for h in handles:
        h.remove()
    return macs


def layer_costs(model_cfg: dict, quant_cfg: dict, num_classes: int, in_channels: int,
                image_size: int) -> tuple[list[LayerCost], int]:
    """Every conv/linear layer's MACs (one image) and weight count, and the number of
    other parameters (stored at 32 bits)."""
    spec = QuantSpec((32,), quant_cfg.get("weight", "dorefa"), quant_cfg.get("act", "dorefa"), True,
                     quant_cfg.get("quantize_first_last", False), quant_cfg.get("quantize_shortcut", False))
    model = build_model(model_cfg["name"], spec, num_classes, in_channels, **dict(model_cfg.get("kwargs") or {}))
    macs = _macs(model, in_channels, image_size)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))]
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, BitSpecificBN) for p in m.parameters())
    other = sum(m.bias.numel() for _, m in layers if m.bias is not None) + bn_params
    return [LayerCost(n, bool(m.quantize), bool(m.quantize_input), int(macs[m]), m.weight.numel())
            for n, m in layers], int(other)


def config_cost(layers: list[LayerCost], other: int, config: BitConfig) -> dict:
    """``{"size_mb", "bops", "layers": [{name, w, a, size_mb, bops}]}`` of a configuration."""
    rows, bits_total, bops = [], other * 32, 0
    for lc in layers:
        lb = config.bits_of(lc.name)
        w = lb.w if lc.quantized else 32
        a = lb.a if (lc.quantized and lc.quantize_input) else 32
        rows.append({"name": lc.name, "w": w, "a": a, "size_mb": lc.weights * w / 8 / 1e6, "bops": lc.macs * w * a})
        bits_total += lc.weights * w
        bops += lc.macs * w * a
    return {"size_mb": bits_total / 8 / 1e6, "bops": float(bops), "layers": rows}


def model_cost(cfg: dict, num_classes: int, in_channels: int, image_size: int, modes) -> dict:
    """Size and BOPs of each uniform bit mode: ``{mode: {"size_mb", "bops"}}``."""
    layers, other = layer_costs(cfg["model"], cfg["quant"], num_classes, in_channels, image_size)
    out = {}
    for b in modes:
        c = config_cost(layers, other, BitConfig.uniform(b))
        out[b] = {"size_mb": c["size_mb"], "bops": c["bops"]}
    return out
