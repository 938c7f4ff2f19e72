"""The integer form of each quantizer: what a trained layer's simulated quantization
is in integers, so that an inference engine can run it with integer kernels.

A quantized weight is ``scale · c`` with integer codes ``c``; a quantized activation is
``scale · q`` with ``q`` in ``0..levels`` (unsigned, zero point 0) after clipping the
float input to ``[0, levels · scale]``.

- DoReFa weights (k ≥ 2 bits): the ``2^k`` levels are the odd multiples of
  ``1/(2^k−1)`` in [−1, 1] (times E|W| with ``weight_scale=mean_abs``), so
  ``c = 2j − (2^k−1)`` with ``j`` the k-bit level index. 1 bit: ``c = ±1``, scale E|W|.
- LSQ weights: ``c = round(clamp(w/s))`` in the signed k-bit range, scale ``s``.
- DoReFa activations: scale ``1/(2^k−1)``; PACT: ``α/(2^k−1)``; LSQ: the learned step.

Every form is checked against the quantizer itself (``scale · c`` must reproduce the
quantizer's output), so a quantizer this module does not know, or one that does not
land on an integer grid, is refused rather than exported wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..quant.quantizers import (FULL_PRECISION, DoReFaAct, DoReFaWeight, LSQQuantizer, NaiveDoReFaAct,
                                NaiveDoReFaWeight, PACTAct)


class NoIntegerForm(InputError):
    """A quantizer (or its state) that has no exact integer form."""


@dataclass(frozen=True)
class IntegerWeight:
    """``weight = scale · codes``. ``bits``: the width of one stored code; ``packed`` maps
    codes to ``0 .. 2^bits − 1`` (``(codes − offset) // stride``) for bit-packing."""

    codes: np.ndarray      # int32, the layer's weight shape
    scale: float
    bits: int
    offset: int            # codes = offset + stride · packed
    stride: int

    @property
    def packed(self) -> np.ndarray:
        return ((self.codes - self.offset) // self.stride).astype(np.uint8)

    @property
    def fits_int8(self) -> bool:
        return int(self.codes.min()) >= -128 and int(self.codes.max()) <= 127


@dataclass(frozen=True)
class ActGrid:
    """Activations quantized as ``scale · q``, ``q`` in ``0..levels``. ``steps``: the float
    operations that bring ``x`` to the grid's units before rounding, in the order the
    quantizer itself runs them (``("clip", hi)`` clips to ``[0, hi]``, ``("mul", v)``,
    ``("div", v)``), so that an exported graph rounds exactly the numbers PyTorch rounds."""

    scale: float
    levels: int
    bits: int
    steps: tuple = ()


def _levels(bits: int) -> int:
    return (1 << bits) - 1


def weight_integer_form(quantizer, weight: torch.Tensor, bits: int, where: str = "layer") -> IntegerWeight:
    """The integer form of ``quantizer(weight, bits)`` (a quantized mode, not 32)."""
    w = weight.detach().float().cpu()
    with torch.no_grad():
        q = quantizer(w, bits).double()
    width = bits
    if isinstance(quantizer, (DoReFaWeight, NaiveDoReFaWeight)):
        mean_abs = float(w.abs().mean())
        if bits == 1:
            scale, offset, stride = mean_abs, -1, 2
        else:
            n = _levels(bits)
            scaled = getattr(quantizer, "scale", "none") == "mean_abs"
            scale, offset, stride = (mean_abs if scaled else 1.0) / n, -n, 2
    elif isinstance(quantizer, LSQQuantizer):
        step = float(quantizer.step[str(bits)].detach())
        if step <= 0:
            raise NoIntegerForm(f"{where}: the LSQ step of {bits}-bit weights was never trained (step 0)")
        qmin, qmax = quantizer._range(bits)
        scale, offset, stride = step, qmin, 1
        width = (qmax - qmin).bit_length()  # LSQ's 1 bit is ternary (-1, 0, 1): 2 bits stored
    else:
        raise NoIntegerForm(f"{where}: weight quantizer {type(quantizer).__name__} has no integer form")
    if scale <= 0:
        raise NoIntegerForm(f"{where}: all-zero weights have no {bits}-bit integer form")
    codes = torch.round(q / scale)
    err = float((codes * scale - q).abs().max())
    if err > 1e-5 * max(float(q.abs().max()), 1e-12):
        raise NoIntegerForm(f"{where}: {bits}-bit weights are not on an integer grid (off by {err:.2e})")
    codes = codes.to(torch.int64).numpy().astype(np.int32)
    packed = codes - offset
    if (packed % stride).any() or packed.min() < 0 or (packed // stride).max() > _levels(width):
        raise NoIntegerForm(f"{where}: {bits}-bit weight codes fall outside the {bits}-bit grid")
    return IntegerWeight(codes, scale, width, offset, stride)


def act_integer_form(quantizer, bits: int, where: str = "layer") -> ActGrid | None:
    """The grid of ``quantizer(x, bits)``; None at full precision."""
    if bits == FULL_PRECISION or quantizer is None:
        return None
    n = _levels(bits)
    if isinstance(quantizer, (DoReFaAct, NaiveDoReFaAct)):  # round(clamp(x, 0, 1)·n)
        return ActGrid(1.0 / n, n, bits, (("clip", 1.0), ("mul", float(n))))
    if isinstance(quantizer, PACTAct):
        alpha = float(quantizer.alpha[str(bits)].detach())
        if alpha <= 0:
            raise NoIntegerForm(f"{where}: PACT clip level α of {bits}-bit activations is {alpha} (must be > 0)")
        return ActGrid(alpha / n, n, bits, (("clip", alpha), ("div", alpha), ("mul", float(n))))  # round(clamp(x,0,α)/α·n)
    if isinstance(quantizer, LSQQuantizer) and not quantizer.signed:
        step = float(quantizer.step[str(bits)].detach())
        if step <= 0:
            raise NoIntegerForm(f"{where}: the LSQ step of {bits}-bit activations was never trained (step 0); "
                                "calibrate it first (--calibrate-bn N)")
        qmax = quantizer._range(bits)[1]
        return ActGrid(step, qmax, bits, (("div", step), ("clip", float(qmax))))  # round(clamp(x/s, 0, qmax))
    raise NoIntegerForm(f"{where}: activation quantizer {type(quantizer).__name__} has no integer form")


def bit_pack(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each < 2^bits) as a dense little-endian bit stream, ``bits`` per value."""
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def bit_unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (planes.reshape(count, bits).astype(np.uint16) * weights).sum(axis=1).astype(np.uint8)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values at ``bits`` each, bit-packed."""
    return (count * bits + 7) // 8
