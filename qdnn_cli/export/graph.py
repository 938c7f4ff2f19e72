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

from .integer import ActGrid, IntegerWeight
from .package import PackedCodes

OPSET = 21  # int16 in DequantizeLinear (8-bit DoReFa codes in a weight-only layer)


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._quantized: dict = {}
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
        out = self._unique(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def codes(self, weight: IntegerWeight, hint: str, transpose: bool = False) -> str:
        """The weight's integer codes, int8 when they fit (int16 otherwise). Codes of at
        most 4 bits are stored as their levels in ONNX's packed 4-bit type (two per
        byte) and decoded in the graph (``offset + stride·p``, cast to int8), which
        ONNX Runtime folds into a constant when it loads the model: the file is half
        the size and the kernel the same."""
        dtype = np.int8 if weight.fits_int8 else np.int16
        if weight.bits > 4:
            codes = weight.codes.T.copy() if transpose else weight.codes
            name = self.const(codes.astype(dtype), f"{hint}.weight_q")
            self.packed[name] = PackedCodes(weight.bits, weight.offset, weight.stride)
            return name
        levels = weight.packed.T.copy() if transpose else weight.packed
        name = self._unique(f"{hint}.weight_level4")
        uint4 = helper.tensor_dtype_to_np_dtype(TensorProto.UINT4)
        self.initializers.append(numpy_helper.from_array(levels.astype(uint4), name))  # raw bytes, two levels each
        self.packed[name] = PackedCodes(weight.bits, 0, 1)
        wide = self.op("Cast", [name], f"{hint}.weight_level", to=TensorProto.INT32)
        scaled = self.op("Mul", [wide, self.const(np.array(weight.stride, np.int32), f"{hint}.code_stride")], f"{hint}.code_scaled")
        codes = self.op("Add", [scaled, self.const(np.array(weight.offset, np.int32), f"{hint}.code_offset")], f"{hint}.code")
        return self.op("Cast", [codes], f"{hint}.weight_q", to=TensorProto.INT8 if dtype is np.int8 else TensorProto.INT16)

    def levels(self, weight: IntegerWeight, hint: str, transpose: bool = False) -> str:
        """The weight's level indices ``p`` (codes = offset + stride·p) as uint8."""
        levels = weight.packed.T.copy() if transpose else weight.packed
        name = self.const(levels, f"{hint}.weight_level")
        self.packed[name] = PackedCodes(weight.bits, 0, 1)
        return name

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

    # ------------------------------------------------------------------ layers
    def integer_conv(self, xq: str, grid: ActGrid, weight: IntegerWeight, hint: str, out_scale: np.ndarray,
                     out_bias: np.ndarray, **conv) -> str:
        """``ConvInteger`` on uint8 activations, then per channel ``· out_scale + out_bias``
        (``out_scale`` already holds the activation and weight scales)."""
        zero_x = self.const(np.array(0, np.uint8), f"{hint}.x_zero")
        if weight.fits_int8:
            w = self.codes(weight, hint)
            acc = self.op("ConvInteger", [xq, w, zero_x], f"{hint}.conv_int", **conv)
        else:
            # codes beyond int8 (8-bit DoReFa: odd codes up to ±255) are stored as their
            # uint8 level p, codes = offset + stride·p, so Σx·c = stride·Σx·p + offset·Σx
            # with Σx over each window (a one-channel ConvInteger of ones): still integer
            if conv.get("group", 1) != 1:
                raise ValueError(f"{hint}: 8-bit codes in a grouped convolution are not supported")
            p = self.levels(weight, hint)
            ones = self.const(np.ones((1, *weight.codes.shape[1:]), np.uint8), f"{hint}.window_ones")
            levels = self.op("ConvInteger", [xq, p, zero_x], f"{hint}.conv_int", **conv)
            window = self.op("ConvInteger", [xq, ones, zero_x], f"{hint}.window_sum", **conv)
            acc = self.op("Add", [self.op("Mul", [levels, self.const(np.array(weight.stride, np.int32), f"{hint}.stride")],
                                          f"{hint}.scaled_levels"),
                                  self.op("Mul", [window, self.const(np.array(weight.offset, np.int32), f"{hint}.offset")],
                                          f"{hint}.offset_sum")], f"{hint}.acc")
        return self._rescale(acc, out_scale.reshape(1, -1, 1, 1), out_bias.reshape(1, -1, 1, 1), hint)

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
        zero_x = self.const(np.array(0, np.uint8), f"{hint}.x_zero")
        if weight.fits_int8:
            w = self.codes(weight, hint, transpose=True)
            acc = self.op("MatMulInteger", [xq, w, zero_x], f"{hint}.matmul_int")
        else:
            p = self.levels(weight, hint, transpose=True)
            ones = self.const(np.ones((weight.codes.shape[1], 1), np.uint8), f"{hint}.row_ones")
            levels = self.op("MatMulInteger", [xq, p, zero_x], f"{hint}.matmul_int")
            total = self.op("MatMulInteger", [xq, ones, zero_x], f"{hint}.row_sum")
            acc = self.op("Add", [self.op("Mul", [levels, self.const(np.array(weight.stride, np.int32), f"{hint}.stride")],
                                          f"{hint}.scaled_levels"),
                                  self.op("Mul", [total, self.const(np.array(weight.offset, np.int32), f"{hint}.offset")],
                                          f"{hint}.offset_sum")], f"{hint}.acc")
        return self._rescale(acc, out_scale.reshape(1, -1), out_bias.reshape(1, -1), hint)

    def float_linear(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        return self.op("Gemm", [x, self.const(weight.astype(np.float32), f"{hint}.weight"),
                                self.const(bias.astype(np.float32), f"{hint}.bias")], f"{hint}.out", transB=1)

    def affine(self, x: str, scale: np.ndarray, shift: np.ndarray, hint: str) -> str:
        """A BatchNorm in inference form (per channel ``x·scale + shift``)."""
        shape = (1, -1, 1, 1)
        scaled = self.op("Mul", [x, self.const(scale.reshape(shape).astype(np.float32), f"{hint}.scale")], f"{hint}.mul")
        return self.op("Add", [scaled, self.const(shift.reshape(shape).astype(np.float32), f"{hint}.shift")], f"{hint}.out")

    def model(self, input_name: str, input_shape: tuple, output: str, classes: int, doc: str) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *input_shape])
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", classes])
        graph = helper.make_graph(self.nodes, self.name, [inp], [out], self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdnn")
        model.ir_version = 10  # opset 21; readable by onnxruntime >= 1.20
        onnx.checker.check_model(model)
        return model
