"""A model in its current bit mode (or per-layer configuration) as one ONNX graph.

Each layer is read as it stands: its weight and activation bits (``w_bits``, ``a_bits``)
and the BN its mode selects, so a bit mode and a mixed configuration lower alike. A BN
that follows a convolution is folded into it, one set of constants per mode; a BN that
precedes one (pre-activation blocks) becomes a per-channel multiply-add. Full-precision
layers (the first convolution and the classifier unless the run quantized them) stay float.

The models know nothing about export: this module walks the architectures qdnn builds
(TinyNet, the CIFAR and pre-activation ResNets, the torchvision-layout ResNets) and names
any other one it meets.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..models.resnets import (BasicBlock, Bottleneck, CifarBasicBlock, CifarResNet, PreActBlock, PreActResNet,
                              ResNet, TinyNet)
from ..quant.layers import BitSpecificBN, QConv2d, QLinear
from ..quant.quantizers import FULL_PRECISION
from .graph import GraphBuilder, accumulator_scale, quantized_bias
from .integer import act_integer_form, weight_integer_form


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray] | None:
    """The inference-time ``(scale, shift)`` of a BN in its current mode (None: no BN)."""
    if bn is None or isinstance(bn, nn.Identity):
        return None
    if not isinstance(bn, BitSpecificBN):
        raise InputError(f"no ONNX form for normalisation {type(bn).__name__}")
    norm = bn.bn[bn._key]
    gamma = _np(bn.weight if bn.private_stats else norm.weight)
    beta = _np(bn.bias if bn.private_stats else norm.bias)
    scale = gamma / np.sqrt(_np(norm.running_var) + norm.eps)
    return scale, beta - _np(norm.running_mean) * scale


def _conv_attrs(conv: nn.Conv2d) -> dict:
    kh, kw = conv.kernel_size
    ph, pw = conv.padding
    return dict(kernel_shape=[kh, kw], strides=list(conv.stride), pads=[ph, pw, ph, pw],
                dilations=list(conv.dilation), group=conv.groups)


RESIDUAL_BLOCKS = (CifarBasicBlock, BasicBlock, Bottleneck)  # blocks that end in ReLU(sum): a non-negative stream


@torch.no_grad()
def output_ranges(model: nn.Module, batches) -> dict:
    """The largest |output| over ``batches`` of every BN of ``model`` in its current mode
    (a convolution's output with its BN folded in) and of every residual block (the
    stream between blocks): the 8-bit scales of a QDQ export with ``residual="int8"``."""
    ranges: dict = {}

    def hook(module, args, out):
        ranges[module] = max(ranges.get(module, 0.0), float(out.detach().abs().max()))
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (BitSpecificBN, *RESIDUAL_BLOCKS))]
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return ranges


def _through_uint8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x))`` at ``scale`` (rounded to float32, as the graph
    stores it): half to even, saturating to uint8, in ``x``'s own precision (the float64
    reference needs that; ``torch.fake_quantize_per_tensor_affine`` rounds its scale's
    reciprocal in float32)."""
    scale = float(np.float32(scale))
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


@contextlib.contextmanager
def simulated_qdq(lowering: "Lowering"):
    """The model computes what its QDQ export computes: each fused convolution's bias
    rounded to int32 at the accumulator's scale, each requantized residual input rounded to
    the export's 8-bit grid (uint8, zero point 128, half to even as ``QuantizeLinear``), and
    each residual stream to its uint8 grid (zero point 0). The export's parity reference;
    the plain model gives the top-1 cost of these roundings."""
    def hook(module):
        shift = lowering.bias_shift.get(module)
        shift = None if shift is None else torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1)
        scale, stream = lowering.requantized.get(module), lowering.streams.get(module)

        def apply(module, args, out):
            if shift is not None:
                out = out + shift.to(out.device)
            if scale is not None:
                out = _through_uint8(out, scale, 128)
            if stream is not None:  # zero point 0: negatives become 0, the ReLU that follows a stem BN
                out = _through_uint8(out, stream, 0)
            return out
        return apply
    hooked = set(lowering.bias_shift) | set(lowering.requantized) | set(lowering.streams)
    handles = [m.register_forward_hook(hook(m)) for m in hooked]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _runs_integer(layer: nn.Module) -> bool:
    """A convolution that quantizes both its weights and its input (an integer kernel)."""
    return (isinstance(layer, QConv2d) and layer.quantize and layer.w_bits != FULL_PRECISION
            and layer.quantize_input and layer.a_bits != FULL_PRECISION)


class Lowering:
    """Emits one model's layers into a :class:`GraphBuilder`. ``ranges`` (QDQ form only):
    output ranges from :func:`output_ranges`; given, a quantized convolution whose output
    feeds a float residual sum is requantized to int8-range uint8 at that range's scale, so
    that the runtime fuses it into an integer kernel too, and the residual stream (the stem's
    and every block's ReLU output) goes through uint8 at its range's scale, so that the sums
    fuse into integer additions; absent, those stay float."""

    def __init__(self, model: nn.Module, graph: GraphBuilder, ranges: dict | None = None):
        self.g = graph
        # a full-precision mode's stream stays float: only integer convolutions read it in integers
        self.ranges = ranges if any(_runs_integer(m) for m in model.modules()) else None
        self.requantized: dict = {}  # BN module -> the 8-bit scale its output was requantized at
        self.bias_shift: dict = {}   # BN module -> what rounding the bias to int32 adds to its output
        self.streams: dict = {}      # stem BN or residual block -> the uint8 scale of the stream it outputs
        self.names = {m: n for n, m in model.named_modules()}
        self.int_layers = 0       # layers run by integer kernels
        self.float_layers = 0

    def conv(self, conv: QConv2d, x: str, bn=None, feeds_float: bool = False) -> str:
        """``bn(conv(x))`` with the BN folded in (``bn`` None: the conv alone).
        ``feeds_float``: its output goes into float arithmetic (a residual sum, the head)."""
        name = self.names[conv]
        out_ch = conv.out_channels
        affine = bn_affine(bn) or (np.ones(out_ch), np.zeros(out_ch))
        bn_scale, bn_shift = affine
        conv_bias = _np(conv.bias) if conv.bias is not None else np.zeros(out_ch)
        bias = conv_bias * bn_scale + bn_shift
        attrs = _conv_attrs(conv)
        w_bits = conv.w_bits if conv.quantize else FULL_PRECISION
        if w_bits == FULL_PRECISION:
            self.float_layers += 1
            weight = _np(conv.weight) * bn_scale.reshape(-1, 1, 1, 1)
            if conv.quantize_input and conv.a_bits != FULL_PRECISION:
                raise InputError(f"{name}: full-precision weights under {conv.a_bits}-bit activations have no "
                                 "integer form here")
            return self.g.float_conv(x, bias, name, weight=weight, **attrs)
        codes = weight_integer_form(conv.weight_quant, conv.weight, w_bits, name)
        grid = act_integer_form(conv.act_quant, conv.a_bits, name) if conv.quantize_input else None
        if grid is None:  # input stays float: weight-only quantization, a float Conv
            self.float_layers += 1
            return self.g.float_conv(x, bias, name, codes=codes, code_scale=codes.scale * bn_scale, **attrs)
        self.int_layers += 1
        if self.g.form == "qdq":
            y = self.g.qdq_conv(x, grid, codes, name, codes.scale * bn_scale, bias, **attrs)
            q, s = quantized_bias(bias, accumulator_scale(grid, codes, codes.scale * bn_scale))
            if bn is not None:
                self.bias_shift[bn] = q.astype(np.float64) * s.astype(np.float64) - bias
            if feeds_float and self.ranges is not None and self.ranges.get(bn):
                self.requantized[bn] = self.ranges[bn] / 127.0
                y = self.g.requantize(y, self.requantized[bn], name)
            return y
        xq = self.g.quantize(x, grid, name)
        return self.g.integer_conv(xq, grid, codes, name, grid.scale * codes.scale * bn_scale, bias, **attrs)

    def linear(self, fc: QLinear, x: str) -> str:
        name = self.names[fc]
        bias = _np(fc.bias) if fc.bias is not None else np.zeros(fc.out_features)
        if not fc.quantize or fc.w_bits == FULL_PRECISION:
            self.float_layers += 1
            if fc.quantize and fc.a_bits != FULL_PRECISION:
                raise InputError(f"{name}: full-precision weights under {fc.a_bits}-bit activations have no integer form here")
            return self.g.float_linear(x, _np(fc.weight), bias, name)
        codes = weight_integer_form(fc.weight_quant, fc.weight, fc.w_bits, name)
        grid = act_integer_form(fc.act_quant, fc.a_bits, name)
        if grid is None:
            raise InputError(f"{name}: {fc.w_bits}-bit weights under full-precision activations have no integer form here")
        self.int_layers += 1
        if self.g.form == "qdq":
            return self.g.qdq_linear(x, grid, codes, name, np.full(fc.out_features, codes.scale), bias)
        xq = self.g.quantize(x, grid, name)
        return self.g.integer_linear(xq, codes, name, np.full(fc.out_features, grid.scale * codes.scale), bias)

    def bn(self, bn: BitSpecificBN, x: str) -> str:
        scale, shift = bn_affine(bn)
        return self.g.affine(x, scale, shift, self.names[bn])

    def relu(self, x: str) -> str:
        return self.g.relu(x)

    def stream(self, module: nn.Module, x: str) -> str:
        """``x``, the ReLU output of ``module`` (a residual block, or the stem's BN) that the
        next block reads twice (its first convolution and its shortcut): through uint8 with
        ``residual="int8"``, as it is."""
        if self.g.form != "qdq" or not self.ranges or not self.ranges.get(module):
            return x
        self.streams[module] = self.ranges[module] / 255.0
        return self.g.requantize_stream(x, self.streams[module], f"{self.names[module]}")

    def add(self, a: str, b: str) -> str:
        return self.g.op("Add", [a, b], "add")

    def head(self, fc: QLinear, x: str) -> str:
        pooled = self.g.op("GlobalAveragePool", [x], "pool")
        return self.linear(fc, self.g.op("Flatten", [pooled], "flatten", axis=1))

    # ------------------------------------------------------------------ blocks
    def block(self, block: nn.Module, x: str) -> str:
        if isinstance(block, CifarBasicBlock):
            out = self.relu(self.conv(block.conv1, x, block.bn1))
            out = self.conv(block.conv2, out, block.bn2, feeds_float=True)
            return self.stream(block, self.relu(self.add(out, self._option_a(block, x))))
        if isinstance(block, PreActBlock):
            out = self.relu(self.bn(block.bn1, x))
            short = x if block.shortcut is None else self.conv(block.shortcut, out)
            out = self.conv(block.conv1, out)
            out = self.conv(block.conv2, self.relu(self.bn(block.bn2, out)))
            return self.add(out, short)
        if isinstance(block, (BasicBlock, Bottleneck)):
            out = self.relu(self.conv(block.conv1, x, block.bn1))
            if isinstance(block, Bottleneck):
                out = self.relu(self.conv(block.conv2, out, block.bn2))
                out = self.conv(block.conv3, out, block.bn3, feeds_float=True)
            else:
                out = self.conv(block.conv2, out, block.bn2, feeds_float=True)
            identity = x if block.downsample is None else self.conv(block.downsample[0], x, block.downsample[1],
                                                                    feeds_float=True)
            return self.stream(block, self.relu(self.add(out, identity)))
        raise InputError(f"no ONNX form for block {type(block).__name__}")

    def _option_a(self, block: CifarBasicBlock, x: str) -> str:
        """The parameter-free shortcut: every stride-th pixel, channels zero-padded."""
        if block.pad == 0 and block.stride == 1:
            return x
        g, s = self.g, block.stride
        quantized = g.dequantized.get(x)  # a uint8 stream: slice and pad its codes (0 is 0.0), dequantize after
        strided = g.op("Slice", [quantized[0] if quantized else x, g.const(np.array([0, 0], np.int64), "sc.starts"),
                                 g.const(np.array([2**62, 2**62], np.int64), "sc.ends"),
                                 g.const(np.array([2, 3], np.int64), "sc.axes"),
                                 g.const(np.array([s, s], np.int64), "sc.steps")], "shortcut.slice")
        half = block.pad // 2
        pads = np.array([0, half, 0, 0, 0, block.pad - half, 0, 0], np.int64)
        padded = g.op("Pad", [strided, g.const(pads, "sc.pads")], "shortcut.pad")
        return g.op("DequantizeLinear", [padded, *quantized[1:]], "shortcut.dq") if quantized else padded

    def stages(self, model, x: str, names=("layer1", "layer2", "layer3", "layer4")) -> str:
        for stage in names:
            for block in getattr(model, stage, ()):
                x = self.block(block, x)
        return x


def lower_model(model: nn.Module, graph: GraphBuilder, x: str, ranges: dict | None = None) -> tuple[str, Lowering]:
    """Emit ``model`` (eval, current bit mode) into ``graph`` from input ``x``; returns the
    logits' name and the lowering (its layer counts)."""
    low = Lowering(model, graph, ranges)
    if isinstance(model, TinyNet):
        for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2), (model.conv3, model.bn3)):
            x = low.relu(low.conv(conv, x, bn, feeds_float=conv is model.conv3))  # the last one feeds the float head
        return low.head(model.fc, x), low
    if isinstance(model, CifarResNet):
        x = low.stream(model.bn1, low.relu(low.conv(model.conv1, x, model.bn1)))
        return low.head(model.fc, low.stages(model, x)), low
    if isinstance(model, PreActResNet):
        x = low.stages(model, low.conv(model.conv1, x))
        return low.head(model.fc, low.relu(low.bn(model.bn, x))), low
    if isinstance(model, ResNet):
        x = low.stream(model.bn1, low.relu(low.conv(model.conv1, x, model.bn1)))
        if isinstance(model.maxpool, nn.MaxPool2d):
            x = graph.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        return low.head(model.fc, low.stages(model, x)), low
    raise InputError(f"no ONNX form for model {type(model).__name__}")
