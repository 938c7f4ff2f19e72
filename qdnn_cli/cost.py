"""Model size and bit operations (BOPs) per bit mode.

BOPs of a layer = MACs × weight bits × activation bits; layers kept in full precision
(first conv, classifier, shortcuts by default) count at 32 × 32. Size counts each
conv/linear weight at its mode's bit-width and everything else (biases, one mode's BN,
clip levels) at 32 bits.
"""
from __future__ import annotations

import torch

from .models import build_model
from .quant import BitSpecificBN, QConv2d, QLinear, QuantSpec


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


def model_cost(cfg: dict, num_classes: int, in_channels: int, image_size: int, modes) -> dict:
    q = cfg["quant"]
    spec = QuantSpec((32,), q["weight"], q["act"], True, q.get("quantize_first_last", False),
                     q.get("quantize_shortcut", False))
    model = build_model(cfg["model"]["name"], spec, num_classes, in_channels, **dict(cfg["model"].get("kwargs") or {}))
    macs = _macs(model, in_channels, image_size)
    layers = [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, BitSpecificBN) for p in m.parameters())
    other = sum(m.bias.numel() for m in layers if m.bias is not None) + bn_params
    out = {}
    for b in modes:
        bits_total, bops = other * 32, 0
        for m in layers:
            wb = b if (m.quantize and b != 32) else 32
            ab = b if (getattr(m, "quantize_input", m.quantize) and b != 32) else 32
            bits_total += m.weight.numel() * wb
            bops += macs[m] * wb * ab
        out[b] = {"size_mb": bits_total / 8 / 1e6, "bops": float(bops)}
    return out
