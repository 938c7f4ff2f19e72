"""Fake quantizers for weights and activations, one instance per layer.

Every quantizer is called as ``q(x, bits)``. ``bits == 32`` means full precision and
returns the input untouched, so mode 32 is exactly the full-precision network.

Speed matters here: a quantizable training step runs every bit mode. The activation
quantizer is a custom autograd function: forward is one clamp into a fresh tensor
followed by in-place scale/round/unscale (no autograd graph, no temporaries); backward
is one fused masked-gradient kernel (``hardtanh_backward``) on the saved input, which
the preceding ReLU keeps alive anyway. ``torch.fake_quantize_per_tensor_affine`` would
be a single kernel, but on CPU it measured ~10x slower than this chain (12 ms vs 1.1 ms
on a 128x16x32x32 tensor, 2 threads). ``naive_*`` functions keep the textbook
``round``/``clamp``/``detach`` formulation for tests and the benchmark.

Quantization always runs in float32: under autocast the incoming tensor may be
bf16/fp16, which cannot hold 255 evenly spaced levels exactly.
"""
from __future__ import annotations

import torch
from torch import nn

FULL_PRECISION = 32
VALID_BITS = tuple(range(1, 9)) + (FULL_PRECISION,)


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
        raise ValueError(f"bit mode {bits!r} is not supported: use 1-8 or 32 (full precision)")
    return bits


def _levels(bits: int) -> int:
    return (1 << bits) - 1


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


class _ClampRound(torch.autograd.Function):
    """y = round(clamp(x, 0, 1)·n)·(1/n); dy/dx = 1 inside (0, 1), 0 where clamped."""

    @staticmethod
    def forward(ctx, x, n):
        y = torch.nn.functional.hardtanh(x, 0.0, 1.0)
        y.mul_(n).round_().mul_(1.0 / n)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, 0.0, 1.0), None


class _Round(torch.autograd.Function):
    """y = round(x·n)·(1/n) with an identity gradient (x already inside [0, 1])."""

    @staticmethod
    def forward(ctx, x, n):
        return torch.mul(x, n).round_().mul_(1.0 / n)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def quantize_unit(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round x in [0, 1] to ``2**bits`` evenly spaced levels; straight-through gradient.

    Values outside [0, 1] are clamped and get zero gradient (the clamp's own gradient).
    """
    return _ClampRound.apply(_as_float32(x), _levels(bits))


WEIGHT_SCALES = ("none", "mean_abs")


def dorefa_weight(w: torch.Tensor, bits: int, scale: str = "none", max_grad: bool = False) -> torch.Tensor:
    """DoReFa weights: tanh, map to [0, 1] by the layer's max, quantize, map back to [-1, 1].

    ``scale="mean_abs"`` multiplies the result by E|W| (detached), as Any-Precision does,
    so every mode's weights keep the scale of the raw full-precision ones. ``max_grad``:
    let the gradient flow through max|tanh W| as in DoReFa's own definition; off by
    default because that term lands on the single largest weight of each layer, summed
    over all its elements. 1 bit is E|W|·sign(W) (DoReFa's binary case) either way.
    """
    if bits == 1:
        return naive_sign_weight(w)
    w = _as_float32(w)
    t = torch.tanh(w)
    peak = t.abs().max()
    unit = t / (2 * (peak if max_grad else peak.detach())) + 0.5
    q = _Round.apply(unit, _levels(bits)).mul(2).sub_(1)
    if scale == "mean_abs":
        q = q * w.abs().mean().detach()
    return q


def naive_sign_weight(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().mean().detach()
    s = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w)) * scale
    return w + (s - w).detach()


# --------------------------------------------------------------------------- naive
# The way most research code writes it: separate round/clamp/detach ops.
def naive_quantize_unit(x: torch.Tensor, bits: int) -> torch.Tensor:
    n = _levels(bits)
    x = torch.clamp(x, 0, 1)
    return x + (torch.round(x * n) / n - x).detach()


def naive_dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max()) + 0.5
    return 2 * naive_quantize_unit(unit, bits) - 1


# --------------------------------------------------------------------------- modules
class WeightQuantizer(nn.Module):
    """Base: ``forward(w, bits)``; bits 32 returns w unchanged. ``scale`` and ``max_grad``
    are DoReFa's options (:func:`dorefa_weight`); other quantizers ignore them."""

    def __init__(self, modes: tuple[int, ...], scale: str = "none", max_grad: bool = False):
        super().__init__()
        if scale not in WEIGHT_SCALES:
            raise ValueError(f"quant.weight_scale={scale!r} is unknown: choose one of {', '.join(WEIGHT_SCALES)}")
        self.modes = tuple(modes)
        self.scale, self.max_grad = scale, max_grad

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class DoReFaWeight(WeightQuantizer):
    def forward(self, w, bits):
        if bits == FULL_PRECISION:
            return w
        return dorefa_weight(w, bits, self.scale, self.max_grad)


class NaiveDoReFaWeight(WeightQuantizer):
    def forward(self, w, bits):
        if bits == FULL_PRECISION:
            return w
        return naive_dorefa_weight(w, bits)


class DoReFaAct(nn.Module):
    """Clamp to [0, 1] and round to k bits; full precision passes through."""

    def __init__(self, modes: tuple[int, ...]):
        super().__init__()
        self.modes = tuple(modes)

    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        return quantize_unit(x, bits)


class NaiveDoReFaAct(DoReFaAct):
    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        return naive_quantize_unit(x, bits)


class PACTAct(nn.Module):
    """PACT: clip at a learned level alpha, one alpha per bit mode (AdaBits' switchable clip).

    y = round(clamp(x, 0, alpha) / alpha * n) * alpha / n. Gradient: straight through
    inside (0, alpha), zero below 0, and d y / d alpha = 1 where x >= alpha.
    """

    def __init__(self, modes: tuple[int, ...], init_alpha: float = 8.0):
        super().__init__()
        self.modes = tuple(modes)
        self.alpha = nn.ParameterDict(
            {str(b): nn.Parameter(torch.tensor(float(init_alpha))) for b in modes if b != FULL_PRECISION}
        )

    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        alpha = self.alpha[str(bits)]
        x = _as_float32(x)
        # clamp with alpha as a tensor gives the PACT gradient for alpha (1 where x > alpha).
        clipped = torch.minimum(torch.relu(x), alpha)
        n = _levels(bits)
        unit = clipped / alpha
        q = unit + (torch.round(unit * n) / n - unit).detach()
        return q * alpha


class LSQQuantizer(nn.Module):
    """LSQ: learned step size per bit mode, for weights (signed) or activations (unsigned).

    y = round(clamp(x / s, qmin, qmax)) * s, straight-through inside the range with the
    LSQ gradient scale 1/sqrt(numel * qmax) on s. A step of 0 means "not initialised yet":
    it is set from the first tensor seen in training (2 * mean|x| / sqrt(qmax)). Keeping
    that state in the value itself lets a mode be added to a trained model later.
    """

    def __init__(self, modes: tuple[int, ...], signed: bool):
        super().__init__()
        self.modes = tuple(modes)
        self.signed = signed
        keys = [str(b) for b in modes if b != FULL_PRECISION]
        self.step = nn.ParameterDict({k: nn.Parameter(torch.tensor(0.0)) for k in keys})
        self._ready: set[str] = set()  # modes known to be initialised: skip the host sync

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = set()  # loaded steps may be 0 (never trained): check again
        super()._load_from_state_dict(*args, **kwargs)

    def uninitialised(self) -> bool:
        return any(p.item() <= 0 for p in self.step.values())

    def mark_ready(self) -> None:
        """Every step is set: forward never looks at the values again (no host sync)."""
        self._ready = {k for k, p in self.step.items() if p.item() > 0}

    def _range(self, bits: int) -> tuple[int, int]:
        if self.signed:
            if bits == 1:
                return -1, 1
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, _levels(bits)

    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        key = str(bits)
        x = _as_float32(x)
        qmin, qmax = self._range(bits)
        step = self.step[key]
        if key not in self._ready and self.training:
            if step.item() <= 0:
                with torch.no_grad():
                    step.copy_(2 * x.detach().abs().mean() / (qmax ** 0.5) + 1e-8)
            self._ready.add(key)
        g = 1.0 / ((x.numel() * qmax) ** 0.5)
        s = step * g + (step - step * g).detach()  # gradient scaled, value unchanged
        v = torch.clamp(x / s, qmin, qmax)
        return (v + (torch.round(v) - v).detach()) * s


class LSQWeight(LSQQuantizer):
    def __init__(self, modes, **dorefa_options):  # LSQ learns its own scale
        super().__init__(modes, signed=True)


class LSQAct(LSQQuantizer):
    def __init__(self, modes):
        super().__init__(modes, signed=False)


# quant.weight / quant.act name -> class: adding a quantizer is one entry here. PACT
# learns an activation clip level; its weights are DoReFa's (as in AdaBits).
WEIGHT_QUANTIZERS = {"dorefa": DoReFaWeight, "lsq": LSQWeight, "pact": DoReFaWeight, "naive": NaiveDoReFaWeight}
ACT_QUANTIZERS = {"dorefa": DoReFaAct, "lsq": LSQAct, "pact": PACTAct, "naive": NaiveDoReFaAct}
