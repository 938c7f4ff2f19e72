"""An ONNX graph built op by op, with the integer convolution this export is about.

Why ``ConvInteger`` and not the QDQ pattern ``DequantizeLinear → Conv``: ONNX Runtime
turns a QDQ convolution into an integer kernel (``QLinearConv``) only when its output is
quantized again, and half the convolutions of a ResNet feed a full-precision residual
sum (the model keeps it in float). Measured with onnxruntime 1.32: ``DQ → Conv`` stays a
float ``Conv`` after optimisation, ``DQ → Conv → Q`` becomes ``QLinearConv``. So every
quantized convolution here is explicit: activations quantized to uint8 by
``QuantizeLinear``, ``ConvInteger`` (uint8 × int8, int32 accumulation), then one float
multiply-add per output channel that carries the activation and weight scales and the
folded BatchNorm: exactly the arithmetic of the simulated model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .integer import ActGrid, IntegerWeight, NoIntegerForm
from .package import PackedCodes

OPSET = 21  # int16 in DequantizeLinear (8-bit DoReFa codes in a weight-only layer)


class NoQDQForm(NoIntegerForm):
    """A layer whose integer form has no QDQ form (int8 weights, uint8 activations)."""


FORMS = ("integer", "qdq")


def quantized_bias(bias: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``bias`` rounded to int32 multiples of the per-channel accumulator ``scale`` (float32,
    as the graph stores it): (codes, scale)."""
    scale = scale.astype(np.float32)
    return np.round(bias / scale.astype(np.float64)).astype(np.int32), scale


def code_factor(weight: IntegerWeight, grid: ActGrid) -> int:
    """The power of two a QDQ convolution multiplies its weight codes by (their scale divided
    alike): the integer kernel computes the same numbers, but its accumulator's step, and so
    the int32 bias's rounding, becomes that much finer (2-bit DoReFa codes ±1, ±3 become
    ±32, ±96: the bias rounds 32 times finer). Bounded by int8 and by int16, which AVX2's
    uint8 × int8 kernels (no VNNI) sum pairs of products in: 2 · top level · top code."""
    top = int(np.abs(weight.codes).max())
    factor = 1
    while top and top * factor * 2 <= 127 and 2 * grid.levels * top * factor * 2 <= 32767:
        factor *= 2
    return factor


def accumulator_scale(grid: ActGrid, weight: IntegerWeight, weight_scale: np.ndarray) -> np.ndarray:
    """The step of a QDQ convolution's integer sums, per output channel: what its bias is
    rounded to."""
    return grid.scale * np.abs(weight_scale) / code_factor(weight, grid)


class GraphBuilder:
    """``form``: ``integer`` (``ConvInteger`` / ``MatMulInteger`` and an explicit rescale) or
    ``qdq`` (``QuantizeLinear`` / ``DequantizeLinear`` around float operators, the form that
    Brevitas, NNCF and ONNX Runtime's quantizer write and that each runtime fuses into its
    own integer kernels)."""

    def __init__(self, name: str, form: str = "integer"):
        if form not in FORMS:
            raise ValueError(f"--format {form!r}: choose {' or '.join(FORMS)}")
        self.name, self.form = name, form
        self.pre_relu: dict[str, str] = {}  # a Relu's output -> its input (qdq: quantize before the Relu)
        self._deferred: dict[str, str] = {}  # Relus not emitted yet (see relu())
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._quantized: dict = {}
        self.dequantized: dict[str, tuple[str, str, str]] = {}  # a DequantizeLinear's output -> (its input, scale, zero)
        self.packed: dict = {}  # initializer name -> PackedCodes: integer weight codes, for the package

    def _unique(self, hint: str) -> str:
        base = hint.replace("/", ".") or "t"
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self._unique(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        for name in inputs:
            self._materialize(name)
        out = self._unique(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def codes(self, weight: IntegerWeight, hint: str, sign: np.ndarray | None = None) -> str:
        """The weight's signed codes (int8, int16 for 8-bit DoReFa's ±255), decoded in the
        graph from its stored levels (``offset + stride·p``), times a per-output-channel
        ``sign`` when given: constant nodes that ONNX Runtime folds when it loads the model."""
        wide = self.op("Cast", [self.levels(weight, hint)], f"{hint}.level_wide", to=TensorProto.INT32)
        scaled = self.op("Mul", [wide, self.const(np.array(weight.stride, np.int32), f"{hint}.code_stride")], f"{hint}.code_scaled")
        codes = self.op("Add", [scaled, self.const(np.array(weight.offset, np.int32), f"{hint}.code_offset")], f"{hint}.code")
        if sign is not None:  # one per output channel, stored as int8 (a scalar where all are equal)
            if (sign == sign.flat[0]).all():
                multiplier = self.const(np.array(sign.flat[0], np.int32), f"{hint}.code_sign")
            else:
                shape = (-1,) + (1,) * (weight.codes.ndim - 1)
                multiplier = self.op("Cast", [self.const(sign.astype(np.int8).reshape(shape), f"{hint}.code_sign")],
                                     f"{hint}.code_sign_wide", to=TensorProto.INT32)
            codes = self.op("Mul", [codes, multiplier], f"{hint}.code_signed")
        return self.op("Cast", [codes], f"{hint}.weight_q", to=TensorProto.INT8 if weight.fits_int8 else TensorProto.INT16)

    def levels(self, weight: IntegerWeight, hint: str, transpose: bool = False) -> str:
        """The weight's levels ``p`` (codes = offset + stride·p) as uint8: stored two per
        byte (ONNX's packed 4-bit type, cast in the graph and folded at load) when they
        take at most 4 bits, a byte each otherwise."""
        levels = weight.packed.T.copy() if transpose else weight.packed
        if weight.bits > 4:
            name = self.const(levels, f"{hint}.weight_level")
            self.packed[name] = PackedCodes(weight.bits, 0, 1)
            return name
        name = self._unique(f"{hint}.weight_level4")
        uint4 = helper.tensor_dtype_to_np_dtype(TensorProto.UINT4)
        self.initializers.append(numpy_helper.from_array(levels.astype(uint4), name))
        self.packed[name] = PackedCodes(weight.bits, 0, 1)
        return self.op("Cast", [name], f"{hint}.weight_level", to=TensorProto.UINT8)

    # ------------------------------------------------------------------ activations
    def quantize(self, x: str, grid: ActGrid, hint: str) -> str:
        """``x`` on the grid as uint8 levels (cached: a tensor that feeds two layers at the
        same bits is quantized once). The grid's steps run first, as the quantizer runs
        them, then ``QuantizeLinear`` with scale 1 rounds half to even as ``torch.round``
        does; the grid's scale is applied after the integer kernel."""
        key = (x, grid)
        if key not in self._quantized:
            y = x
            for op, value in grid.steps:
                v = self.const(np.array(value, np.float32), f"{hint}.act_{op}")
                if op == "clip":
                    y = self.op("Clip", [y, self.const(np.array(0.0, np.float32), f"{hint}.act_floor"), v], f"{hint}.act_clip")
                else:
                    y = self.op("Mul" if op == "mul" else "Div", [y, v], f"{hint}.act_{op}")
            one = self.const(np.array(1.0, np.float32), f"{hint}.act_unit")
            zero = self.const(np.array(0, np.uint8), f"{hint}.act_zero")
            self._quantized[key] = self.op("QuantizeLinear", [y, one, zero], f"{hint}.act_q")
        return self._quantized[key]

    def relu(self, x: str) -> str:
        """A ReLU, emitted only once something reads it other than a QDQ quantization (which
        quantizes its input instead): a convolution whose output only feeds the next layer's
        ``QuantizeLinear`` then has that as its one consumer, as the runtime's fusion needs."""
        out = self._unique("relu")
        self.pre_relu[out] = x
        self._deferred[out] = x
        return out

    def _materialize(self, name: str) -> None:
        x = self._deferred.pop(name, None)
        if x is not None:
            self._materialize(x)
            self.nodes.append(helper.make_node("Relu", [x], [name], name=name))

    # ------------------------------------------------------------------ the QDQ form
    def qdq_activation(self, x: str, grid: ActGrid, hint: str) -> str:
        """``x`` on the grid, as QDQ: ``QuantizeLinear`` (uint8, zero point 0: negatives
        become 0, which is the quantizer's clip at 0 and any ReLU before it), a ``Clip`` of
        the uint8 levels to the grid's top below 8 bits, ``DequantizeLinear`` at the grid's
        scale. It quantizes the tensor *before* a ReLU, so that a convolution producing it
        is followed directly by ``QuantizeLinear`` and the runtime fuses
        ``DequantizeLinear → Conv → QuantizeLinear`` into one integer kernel."""
        source = self.pre_relu.get(x, x)
        key = ("qdq", source, grid)
        if key not in self._quantized:
            scale = self.const(np.array(grid.scale, np.float32), f"{hint}.act_scale")
            zero = self.const(np.array(0, np.uint8), f"{hint}.act_zero")
            q = self.op("QuantizeLinear", [source, scale, zero], f"{hint}.act_q")
            if grid.levels < 255:
                q = self.op("Clip", [q, self.const(np.array(0, np.uint8), f"{hint}.act_lo"),
                                     self.const(np.array(grid.levels, np.uint8), f"{hint}.act_hi")], f"{hint}.act_top")
            self._quantized[key] = self.op("DequantizeLinear", [q, scale, zero], f"{hint}.act_dq")
        return self._quantized[key]

    def qdq_weight(self, weight: IntegerWeight, scale: np.ndarray, hint: str, factor: int = 1) -> str:
        """The weight as ``DequantizeLinear`` of int8 codes times ``factor`` (see
        :func:`code_factor`), one positive scale per output channel (a negative folded-BN
        scale flips that channel's codes instead)."""
        if not weight.fits_int8:
            raise NoQDQForm(f"{hint}: {weight.bits}-bit weight codes do not fit int8")
        sign = np.where(scale < 0, -1, 1)
        flipped = weight.codes * sign.reshape((-1,) + (1,) * (weight.codes.ndim - 1)) * factor
        if flipped.min() < -128 or flipped.max() > 127:
            raise NoQDQForm(f"{hint}: a negative BN scale flips {weight.bits}-bit codes out of int8")
        multiplier = sign * factor
        codes = self.codes(weight, hint, multiplier if (multiplier != 1).any() else None)  # stored packed, folded at load
        # no zero point: an absent one is 0 of the codes' type, and costs no bytes
        return self.op("DequantizeLinear", [codes, self.const((np.abs(scale) / factor).astype(np.float32), f"{hint}.weight_scale")],
                       f"{hint}.weight", axis=0)

    def qdq_conv(self, x: str, grid: ActGrid, weight: IntegerWeight, hint: str, weight_scale: np.ndarray,
                 bias: np.ndarray, **conv) -> str:
        """A quantized convolution in QDQ form: its float ``Conv`` reads dequantized
        activations and weights (BN folded into the weight scales and the bias)."""
        xq = self.qdq_activation(x, grid, hint)
        factor = code_factor(weight, grid)
        w = self.qdq_weight(weight, weight_scale, hint, factor)
        return self.op("Conv", [xq, w, self.qdq_bias(bias, accumulator_scale(grid, weight, weight_scale), hint)],
                       f"{hint}.out", **conv)

    def qdq_bias(self, bias: np.ndarray, scale: np.ndarray, hint: str) -> str:
        """The bias as int32 at the accumulator's scale (activation × weight scale), which is
        what the integer kernel adds: explicit here, so that the runtime rounds nothing else
        (:func:`quantized_bias` gives the exporter the same numbers)."""
        codes, scale = quantized_bias(bias, scale)
        return self.op("DequantizeLinear", [self.const(codes, f"{hint}.bias_q"),
                                            self.const(scale.astype(np.float32), f"{hint}.bias_scale")],
                       f"{hint}.bias", axis=0)

    def requantize(self, y: str, scale: float, hint: str) -> str:
        """A float tensor through 8 bits and back (uint8, zero point 128: signed values),
        so that the convolution producing it ends in ``QuantizeLinear`` and fuses."""
        s = self.const(np.array(scale, np.float32), f"{hint}.out_scale")
        zero = self.const(np.array(128, np.uint8), f"{hint}.out_zero")
        q = self.op("QuantizeLinear", [y, s, zero], f"{hint}.out_q")
        return self.op("DequantizeLinear", [q, s, zero], f"{hint}.out_dq")

    def requantize_stream(self, x: str, scale: float, hint: str) -> str:
        """A residual stream (a ReLU's output) through uint8 and back at ``scale`` (zero point
        0: ``QuantizeLinear`` saturating at 0 *is* the ReLU, so none is emitted). With every
        input of a residual sum dequantized this way, the runtime fuses the sum into an
        integer addition and keeps the whole block in integers."""
        source = self.pre_relu.get(x, x)
        s = self.const(np.array(scale, np.float32), f"{hint}.stream_scale")
        zero = self.const(np.array(0, np.uint8), f"{hint}.stream_zero")
        q = self.op("QuantizeLinear", [source, s, zero], f"{hint}.stream_q")
        out = self.op("DequantizeLinear", [q, s, zero], f"{hint}.stream")
        self.dequantized[out] = (q, s, zero)
        return out

    def qdq_linear(self, x: str, grid: ActGrid, weight: IntegerWeight, hint: str, weight_scale: np.ndarray,
                   bias: np.ndarray) -> str:
        xq = self.qdq_activation(x, grid, hint)
        w = self.qdq_weight(weight, weight_scale, hint)
        return self.op("Gemm", [xq, w, self.const(bias.astype(np.float32), f"{hint}.bias")], f"{hint}.out", transB=1)

    # ------------------------------------------------------------------ layers
    def integer_conv(self, xq: str, grid: ActGrid, weight: IntegerWeight, hint: str, out_scale: np.ndarray,
                     out_bias: np.ndarray, **conv) -> str:
        """``ConvInteger`` of uint8 activations and uint8 weight levels, then per channel
        ``· out_scale + out_bias`` (``out_scale`` holds the activation and weight scales).

        The weights go in as their levels ``p`` (codes ``c = offset + stride·p``), not as
        int8 codes: ONNX Runtime's uint8 × uint8 kernel measured twice as fast as its
        uint8 × int8 one on this project's CPU (experiments/export), and 8-bit DoReFa codes
        (odd, up to ±255) fit no int8 anyway. With ``stride`` 1 (LSQ) the offset is the
        kernel's weight zero point; with 2 (DoReFa's odd codes) ``Σx·c = 2·Σx·p + offset·Σx``,
        the window sums ``Σx`` from a one-output-channel ``ConvInteger`` of ones."""
        return self._integer_op("ConvInteger", xq, weight, hint, (1, -1, 1, 1), out_scale, out_bias,
                                np.ones((1, *weight.codes.shape[1:]), np.uint8), False, **conv)

    def _integer_op(self, op: str, xq: str, weight: IntegerWeight, hint: str, shape: tuple, out_scale: np.ndarray,
                    out_bias: np.ndarray, ones: np.ndarray, transpose: bool, **attrs) -> str:
        zero_x = self.const(np.array(0, np.uint8), f"{hint}.x_zero")
        p = self.levels(weight, hint, transpose)
        if weight.stride == 1 and 0 <= -weight.offset <= 255:
            zero_w = self.const(np.array(-weight.offset, np.uint8), f"{hint}.w_zero")
            acc = self.op(op, [xq, p, zero_x, zero_w], f"{hint}.{op}", **attrs)
        else:
            if attrs.get("group", 1) != 1:
                raise ValueError(f"{hint}: DoReFa codes in a grouped convolution are not supported")
            levels = self.op(op, [xq, p, zero_x], f"{hint}.{op}", **attrs)
            window = self.op(op, [xq, self.const(ones, f"{hint}.window_ones"), zero_x], f"{hint}.window_sum", **attrs)
            acc = self.op("Add", [self.op("Mul", [levels, self.const(np.array(weight.stride, np.int32), f"{hint}.stride")],
                                          f"{hint}.scaled_levels"),
                                  self.op("Mul", [window, self.const(np.array(weight.offset, np.int32), f"{hint}.offset")],
                                          f"{hint}.offset_sum")], f"{hint}.acc")
        return self._rescale(acc, out_scale.reshape(shape), out_bias.reshape(shape), hint)

    def _rescale(self, acc: str, scale: np.ndarray, bias: np.ndarray, hint: str) -> str:
        as_float = self.op("Cast", [acc], f"{hint}.acc_float", to=TensorProto.FLOAT)
        scaled = self.op("Mul", [as_float, self.const(scale.astype(np.float32), f"{hint}.out_scale")], f"{hint}.scaled")
        return self.op("Add", [scaled, self.const(bias.astype(np.float32), f"{hint}.out_bias")], f"{hint}.out")

    def float_conv(self, x: str, bias: np.ndarray, hint: str, weight: np.ndarray | None = None,
                   codes: IntegerWeight | None = None, code_scale: np.ndarray | None = None, **conv) -> str:
        """A float ``Conv`` with a float ``weight``, or (weight-only quantization, for a
        layer whose input stays full precision) with integer ``codes`` and one scale per
        output channel, dequantized in the graph."""
        if codes is not None:
            stored = self.codes(codes, hint)
            dtype = np.int8 if codes.fits_int8 else np.int16
            w = self.op("DequantizeLinear", [stored,
                                             self.const(code_scale.astype(np.float32), f"{hint}.weight_scale"),
                                             self.const(np.zeros(len(code_scale), dtype), f"{hint}.weight_zero")],
                        f"{hint}.weight", axis=0)
        else:
            w = self.const(weight.astype(np.float32), f"{hint}.weight")
        return self.op("Conv", [x, w, self.const(bias.astype(np.float32), f"{hint}.bias")], f"{hint}.out", **conv)

    def integer_linear(self, xq: str, weight: IntegerWeight, hint: str, out_scale: np.ndarray, out_bias: np.ndarray) -> str:
        """``MatMulInteger`` as :meth:`integer_conv` does it (window sums: row sums)."""
        return self._integer_op("MatMulInteger", xq, weight, hint, (1, -1), out_scale, out_bias,
                                np.ones((weight.codes.shape[1], 1), np.uint8), True)

    def float_linear(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        return self.op("Gemm", [x, self.const(weight.astype(np.float32), f"{hint}.weight"),
                                self.const(bias.astype(np.float32), f"{hint}.bias")], f"{hint}.out", transB=1)

    def affine(self, x: str, scale: np.ndarray, shift: np.ndarray, hint: str) -> str:
        """A BatchNorm in inference form (per channel ``x·scale + shift``)."""
        shape = (1, -1, 1, 1)
        scaled = self.op("Mul", [x, self.const(scale.reshape(shape).astype(np.float32), f"{hint}.scale")], f"{hint}.mul")
        return self.op("Add", [scaled, self.const(shift.reshape(shape).astype(np.float32), f"{hint}.shift")], f"{hint}.out")

    def model(self, input_name: str, input_shape: tuple, output: str, classes: int, doc: str) -> onnx.ModelProto:
        self._materialize(output)
        inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *input_shape])
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", classes])
        graph = helper.make_graph(self.nodes, self.name, [inp], [out], self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdnn")
        model.ir_version = 10  # opset 21; readable by onnxruntime >= 1.20
        onnx.checker.check_model(model)
        return model
