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

Quantization always runs in float32 or wider: under autocast the incoming tensor may be
bf16/fp16, which cannot hold 255 evenly spaced levels exactly. Every activation quantizer
hands its result back in the input's dtype (what the next convolution casts it to anyway),
so the modes of a mode batch, quantized or not, stay in one dtype.
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


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 inputs (autocast) up to float32; float32 and float64 as they are (the
    equivalence tests run in float64, where summation order cannot flip a rounding)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# --------------------------------------------------------------------------- mode slots
# A mode-batched forward (:mod:`.slots`) runs several bit modes side by side: the tensor
# has a slot axis at dim 1 (``[batch, slots, ...]``) and each slot its own bits. The
# per-slot constants (levels, ranges, the full-precision mask) are small tensors shaped to
# broadcast over that axis, cached per (bits, shape, device) so a step builds none.
def _slot_shape(x: torch.Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _slot_constant(owner: nn.Module, name: str, values: tuple, x: torch.Tensor, dtype=None,
                   slot_dim: int = 1) -> torch.Tensor:
    """``values`` (one per slot) shaped to broadcast along ``x``'s slot axis ``slot_dim``,
    in ``x``'s dtype unless ``dtype`` says otherwise."""
    dtype = dtype or x.dtype
    cache = owner.__dict__.setdefault("_qdnn_slot_constants", {})
    key = (name, values, x.dim(), slot_dim, x.device, dtype)
    t = cache.get(key)
    if t is None:
        shape = [1] * x.dim()
        shape[slot_dim] = len(values)
        t = torch.tensor(values, dtype=dtype, device=x.device).view(shape)
        cache[key] = t
    return t


def _quantized_runs(bits: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """Maximal runs of consecutive slots, (start, end, quantized): modes come sorted, so
    the full-precision slot is one run at the start and the quantized slots one run."""
    runs: list[tuple[int, int, bool]] = []
    for i, b in enumerate(bits):
        q = b != FULL_PRECISION
        if runs and runs[-1][2] == q:
            runs[-1] = (runs[-1][0], i + 1, q)
        else:
            runs.append((i, i + 1, q))
    return runs


def _on_quantized_slots(quantize, x: torch.Tensor, bits: tuple[int, ...], owners: tuple) -> torch.Tensor:
    """``quantize(x_run, bits_run, owners_run)`` on the runs of quantized slots;
    full-precision slots pass through. (A single concatenation: cheaper than a masked
    select, whose forward and backward each read three full tensors.)"""
    runs = _quantized_runs(bits)
    if len(runs) == 1:
        return quantize(x, bits, owners) if runs[0][2] else x
    parts = [quantize(x[:, a:b], bits[a:b], owners[a:b]) if q else x[:, a:b] for a, b, q in runs]
    return torch.cat(parts, dim=1)


def _split_slots(x: torch.Tensor, bits: tuple[int, ...], owners: tuple) -> torch.Tensor:
    """Any quantizer over slots, one slot at a time by its owner (what the fused forms equal)."""
    return torch.stack([o(x[:, i], b) for i, (o, b) in enumerate(zip(owners, bits))], dim=1)


class _ClampRound(torch.autograd.Function):
    """y = round(clamp(x, 0, 1)·n)·(1/n); dy/dx = 1 inside (0, 1), 0 where clamped.

    A bf16/fp16 input (autocast) is quantized in float32 and the level handed back in the
    input's dtype: the value the next convolution would cast it to anyway. The saved input
    and the backward then stay in that dtype (the mask is exact in any), which spares the
    two conversions of the gradient that a float32 output costs."""

    @staticmethod
    def forward(ctx, x, n):
        if x.dtype in (torch.float32, torch.float64):
            y = torch.nn.functional.hardtanh(x, 0.0, 1.0)
            y.mul_(n).round_().mul_(1.0 / n)
        else:
            levels = x.float().clamp_(0.0, 1.0)
            levels.mul_(n).round_().mul_(1.0 / n)
            y = levels.to(x.dtype)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, 0.0, 1.0), None


class _SlotClampRound(torch.autograd.Function):
    """:class:`_ClampRound` over the slots of a mode batch (``[batch, slots, ...]``), with
    per-slot levels ``n``; slots outside the quantized runs pass through unchanged. Writes
    each run into one output of x's layout: no masked select and no concatenation (whose
    backward would materialise a zero-filled full-size gradient per slice). A bf16/fp16 x
    is quantized in float32 (``n`` is float32 then) and handed back in its own dtype, as
    :class:`_ClampRound` does."""

    @staticmethod
    def forward(ctx, x, n, runs):
        y = torch.empty_like(x)
        compiling = torch.compiler.is_compiling()  # torch.compile traces no out= into a strided view
        narrow = x.dtype not in (torch.float32, torch.float64)
        for a, b, quantized in runs:
            if quantized and narrow:
                y[:, a:b] = x[:, a:b].float().clamp_(0.0, 1.0).mul_(n[:, a:b]).round_().mul_(1.0 / n[:, a:b])
            elif quantized and compiling:
                y[:, a:b] = torch.clamp(x[:, a:b], 0.0, 1.0).mul(n[:, a:b]).round().mul(1.0 / n[:, a:b])
            elif quantized:
                part = y[:, a:b]
                torch.clamp(x[:, a:b], 0.0, 1.0, out=part)
                part.mul_(n[:, a:b]).round_().mul_(1.0 / n[:, a:b])
            else:
                y[:, a:b] = x[:, a:b]
        ctx.save_for_backward(x)
        ctx.runs = runs
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        dx = torch.empty_like(grad)
        compiling = torch.compiler.is_compiling()
        for a, b, quantized in ctx.runs:
            if quantized and compiling:
                dx[:, a:b] = torch.ops.aten.hardtanh_backward(grad[:, a:b], x[:, a:b], 0.0, 1.0)
            elif quantized:
                torch.ops.aten.hardtanh_backward.grad_input(grad[:, a:b], x[:, a:b], 0.0, 1.0, grad_input=dx[:, a:b])
            else:
                dx[:, a:b] = grad[:, a:b]
        return dx, None, None


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
    return _ClampRound.apply(x, _levels(bits))


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
    w = _at_least_float32(w)
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


def _slot_index(owner: nn.Module, run_index: tuple[int, ...], device) -> torch.Tensor:
    cache = owner.__dict__.setdefault("_qdnn_slot_constants", {})
    key = ("run_index", run_index, device)
    if key not in cache:
        cache[key] = torch.tensor(run_index, dtype=torch.long, device=device)
    return cache[key]


def dorefa_weight_slots(weights: torch.Tensor, run_index: tuple[int, ...], bits: tuple[int, ...],
                        scale: str = "none", max_grad: bool = False, owner: nn.Module | None = None) -> torch.Tensor:
    """:func:`dorefa_weight` of many slots in a few kernels: ``weights`` holds one weight
    per run (``[runs, ...]``), slot ``i`` is ``dorefa_weight(weights[run_index[i]], bits[i])``
    (the weight itself at 32 bits); returns ``[slots, ...]``. ``owner`` caches the slot index."""
    w = _at_least_float32(weights)
    dims = tuple(range(1, w.dim()))
    owner = owner if owner is not None else nn.Module()
    idx = _slot_index(owner, run_index, w.device)
    out = None
    if any(b not in (1, FULL_PRECISION) for b in bits):
        t = torch.tanh(w)
        peak = t.abs().amax(dim=dims, keepdim=True)
        unit = (t / (2 * (peak if max_grad else peak.detach())) + 0.5).index_select(0, idx)
        levels = _slot_constant(owner, "weight_levels", tuple(_levels(b) if b not in (1, FULL_PRECISION) else 1
                                                               for b in bits), w, slot_dim=0)
        out = _Round.apply(unit, levels).mul(2).sub_(1)
        if scale == "mean_abs":
            out = out * w.abs().mean(dim=dims, keepdim=True).detach().index_select(0, idx)
    if 1 in bits:  # E|W|·sign(W), straight through (as naive_sign_weight)
        mean_abs = w.abs().mean(dim=dims, keepdim=True).detach()
        sign = torch.where(w >= 0, mean_abs, -mean_abs)
        binary = (w + (sign - w).detach()).index_select(0, idx)
        ones = _slot_constant(owner, "one_bit", tuple(b == 1 for b in bits), w, torch.bool, slot_dim=0)
        out = binary if out is None else torch.where(ones, binary, out)
    if FULL_PRECISION in bits:
        full = w.index_select(0, idx)
        fp = _slot_constant(owner, "full_precision", tuple(b == FULL_PRECISION for b in bits), w, torch.bool,
                            slot_dim=0)
        out = full if out is None else torch.where(fp, full, out)
    return out


def quantize_weight_slots(quantizers: tuple, weights: torch.Tensor, run_index: tuple[int, ...],
                          bits: tuple[int, ...]) -> torch.Tensor:
    """Each slot's quantized weight, ``[slots, ...]``: slot ``i`` is
    ``quantizers[i](weights[run_index[i]], bits[i])``. DoReFa weights (no parameters) go
    through :func:`dorefa_weight_slots`; other quantizers slot by slot, each slot of a
    run at the same bits computed once."""
    first = quantizers[0]
    if type(first) is DoReFaWeight and all(type(q) is DoReFaWeight and (q.scale, q.max_grad) ==
                                           (first.scale, first.max_grad) for q in quantizers):
        return dorefa_weight_slots(weights, run_index, bits, first.scale, first.max_grad, first)
    done: dict[tuple[int, int], torch.Tensor] = {}
    for q, r, b in zip(quantizers, run_index, bits):
        if (r, b) not in done:
            done[(r, b)] = q(weights[r], b)
    return torch.stack([done[(r, b)] for r, b in zip(run_index, bits)])


class NaiveDoReFaWeight(WeightQuantizer):
    def forward(self, w, bits):
        if bits == FULL_PRECISION:
            return w
        return naive_dorefa_weight(w, bits)


class ActQuantizer(nn.Module):
    """Base: ``forward(x, bits)``; ``forward_slots(x, bits, owners)`` quantizes each slot of
    ``x`` (``[batch, slots, ...]``) at its own bits with its owner's parameters (the
    quantizer of the model that slot belongs to; all ``self`` in a one-model mode batch),
    equal to ``owners[i](x[:, i], bits[i])`` for every slot."""

    def __init__(self, modes: tuple[int, ...]):
        super().__init__()
        self.modes = tuple(modes)

    def forward(self, x, bits):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_slots(self, x: torch.Tensor, bits: tuple[int, ...], owners: tuple | None = None) -> torch.Tensor:
        if all(b == FULL_PRECISION for b in bits):
            return x
        return _split_slots(x, bits, owners or (self,) * len(bits))


class DoReFaAct(ActQuantizer):
    """Clamp to [0, 1] and round to k bits; full precision passes through."""

    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        return quantize_unit(x, bits)

    def forward_slots(self, x, bits, owners=None):  # no parameters: the owners' are all alike
        runs = _quantized_runs(bits)
        if not any(q for _, _, q in runs):
            return x
        level_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # levels round in float32
        n = _slot_constant(self, "levels", tuple(_levels(b) if b != FULL_PRECISION else 1 for b in bits), x,
                           dtype=level_dtype)
        return _SlotClampRound.apply(x, n, tuple(runs))


class NaiveDoReFaAct(ActQuantizer):
    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        return naive_quantize_unit(x, bits)


class PACTAct(ActQuantizer):
    """PACT: clip at a learned level alpha, one alpha per bit mode (AdaBits' switchable clip).

    y = round(clamp(x, 0, alpha) / alpha * n) * alpha / n. Gradient: straight through
    inside (0, alpha), zero below 0, and d y / d alpha = 1 where x >= alpha.
    """

    def __init__(self, modes: tuple[int, ...], init_alpha: float = 8.0):
        super().__init__(modes)
        self.alpha = nn.ParameterDict(
            {str(b): nn.Parameter(torch.tensor(float(init_alpha))) for b in modes if b != FULL_PRECISION}
        )

    def forward(self, x, bits):
        if bits == FULL_PRECISION:
            return x
        alpha = self.alpha[str(bits)]
        given = x.dtype
        x = _at_least_float32(x)
        # clamp with alpha as a tensor gives the PACT gradient for alpha (1 where x > alpha).
        clipped = torch.minimum(torch.relu(x), alpha)
        n = _levels(bits)
        unit = clipped / alpha
        q = unit + (torch.round(unit * n) / n - unit).detach()
        return (q * alpha).to(given)

    def forward_slots(self, x, bits, owners=None):
        return _on_quantized_slots(self._quantize_slots, x, bits, owners or (self,) * len(bits))

    def _quantize_slots(self, x, bits, owners):
        given = x.dtype
        x = _at_least_float32(x)
        alpha = torch.stack([o.alpha[str(b)] for o, b in zip(owners, bits)]).view(_slot_shape(x))
        n = _slot_constant(self, "levels", tuple(_levels(b) for b in bits), x)
        unit = torch.minimum(torch.relu(x), alpha) / alpha
        q = unit + (torch.round(unit * n) / n - unit).detach()
        return (q * alpha).to(given)


class LSQQuantizer(ActQuantizer):
    """LSQ: learned step size per bit mode, for weights (signed) or activations (unsigned).

    y = round(clamp(x / s, qmin, qmax)) * s, straight-through inside the range with the
    LSQ gradient scale 1/sqrt(numel * qmax) on s. A step of 0 means "not initialised yet":
    it is set from the first tensor seen in training (2 * mean|x| / sqrt(qmax)). Keeping
    that state in the value itself lets a mode be added to a trained model later.
    """

    def __init__(self, modes: tuple[int, ...], signed: bool):
        super().__init__(modes)
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
        given = x.dtype
        x = _at_least_float32(x)
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
        return ((v + (torch.round(v) - v).detach()) * s).to(given)

    def forward_slots(self, x, bits, owners=None):
        return _on_quantized_slots(self._quantize_slots, x, bits, owners or (self,) * len(bits))

    def _quantize_slots(self, x, bits, owners):
        given = x.dtype
        x = _at_least_float32(x)
        if self.training and any(str(b) not in o._ready for o, b in zip(owners, bits)):
            for i, (o, b) in enumerate(zip(owners, bits)):  # first sight of a mode: its step from its own slot
                if str(b) not in o._ready and o.step[str(b)].item() <= 0:
                    with torch.no_grad():
                        o.step[str(b)].copy_(2 * x[:, i].detach().abs().mean() / (self._range(b)[1] ** 0.5) + 1e-8)
                o._ready.add(str(b))
        ranges = [self._range(b) for b in bits]
        per_slot = x[:, 0].numel()
        qmin = _slot_constant(self, "qmin", tuple(r[0] for r in ranges), x)
        qmax = _slot_constant(self, "qmax", tuple(r[1] for r in ranges), x)
        g = _slot_constant(self, f"grad_scale{per_slot}", tuple(1.0 / ((per_slot * r[1]) ** 0.5) for r in ranges), x)
        step = torch.stack([o.step[str(b)] for o, b in zip(owners, bits)]).view(_slot_shape(x))
        s = step * g + (step - step * g).detach()
        v = torch.clamp(x / s, qmin, qmax)
        return ((v + (torch.round(v) - v).detach()) * s).to(given)


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
