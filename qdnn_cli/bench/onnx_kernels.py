"""ONNX Runtime's convolution kernels side by side on one layer: which integer kernel
an export should use. ``python -m qdnn_cli.bench.onnx_kernels [--threads 1] [--repeats 30]``

One 3×3 convolution (64 → 64 channels, 8×8, batch 32: a ResNet-20 stage-3 layer), timed
interleaved; each kernel's median and its ratio to the float ``Conv`` of the same run:

- ``Conv`` (float32), what the FP export runs;
- ``ConvInteger`` uint8 × uint8 and uint8 × int8 (int32 out): what ``qdnn export`` can
  use when a convolution's output stays float (it uses uint8 × uint8);
- ``QLinearConv`` uint8 × int8 (uint8 out): the kernel of QDQ models, which needs the
  convolution's output requantized.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _session(ort, node, initializers, x_type, y_type, shape, threads):
    from onnx import helper

    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", x_type, shape)],
                              [helper.make_tensor_value_info("y", y_type, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(threads: int = 1, repeats: int = 30, batch: int = 32, channels: int = 64, size: int = 8) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper as nh

    rng = np.random.default_rng(0)
    shape = [batch, channels, size, size]
    conv = dict(pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    levels = rng.integers(0, 16, (channels, channels, 3, 3)).astype(np.uint8)
    signed = (levels.astype(np.int16) - 8).astype(np.int8)
    zero_u8 = nh.from_array(np.array(0, np.uint8), "zx")
    s = lambda *a: _session(ort, *a, shape, threads)  # noqa: E731
    kernels = {
        "Conv float32": (s(helper.make_node("Conv", ["x", "w"], ["y"], **conv),
                           [nh.from_array(rng.standard_normal(levels.shape).astype(np.float32), "w")], T.FLOAT, T.FLOAT),
                         rng.standard_normal(shape).astype(np.float32)),
        "ConvInteger u8 x u8": (s(helper.make_node("ConvInteger", ["x", "w", "zx"], ["y"], **conv),
                                  [nh.from_array(levels, "w"), zero_u8], T.UINT8, T.INT32), None),
        "ConvInteger u8 x s8": (s(helper.make_node("ConvInteger", ["x", "w", "zx"], ["y"], **conv),
                                  [nh.from_array(signed, "w"), zero_u8], T.UINT8, T.INT32), None),
        "QLinearConv u8 x s8": (s(helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"], **conv),
                                  [nh.from_array(np.array(0.1, np.float32), "sx"), zero_u8, nh.from_array(signed, "w"),
                                   nh.from_array(np.full(channels, 0.01, np.float32), "sw"),
                                   nh.from_array(np.zeros(channels, np.int8), "zw"),
                                   nh.from_array(np.array(0.05, np.float32), "sy"),
                                   nh.from_array(np.array(0, np.uint8), "zy")], T.UINT8, T.UINT8), None),
    }
    x_u8 = rng.integers(0, 16, shape).astype(np.uint8)
    feeds = {k: {"x": x if x is not None else x_u8} for k, (_, x) in kernels.items()}
    for k, (sess, _) in kernels.items():
        for _ in range(3):
            sess.run(None, feeds[k])
    times = {k: [] for k in kernels}
    for _ in range(repeats):
        for k, (sess, _) in kernels.items():
            start = time.perf_counter()
            sess.run(None, feeds[k])
            times[k].append(1000 * (time.perf_counter() - start))
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["Conv float32"]
    print(f"one 3x3 conv, {channels}->{channels} channels, {size}x{size}, batch {batch}; onnxruntime {ort.__version__}, "
          f"{threads} thread(s), median of {repeats}")
    for k, v in medians.items():
        print(f"  {k:22s} {v:8.3f} ms  ratio to float {v / base:.2f}")
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    run(args.threads, args.repeats)
