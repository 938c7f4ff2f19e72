"""The switchable package: every exported mode in one file, integer weights bit-packed.

``switchable.npz`` (numpy's uncompressed zip) holds, per mode, the ONNX graph without its
weights (a few kilobytes) and, for every weight tensor, a reference to a blob. Integer
weight codes are stored bit-packed at their own width (a 2-bit mode's codes take 2 bits
each); float tensors (scales, folded BN, full-precision layers) as float32 bytes. Blobs
are content-addressed, so a tensor that several modes share (the classifier kept in full
precision, say) is stored once. :func:`mode_model` rebuilds any mode's ONNX model,
identical to the per-mode file, from it.

Why not one ONNX graph with the mode as an input: every mode's integer codes differ
(DoReFa's k-bit levels are not nested), so such a graph would hold every mode's weights
at one byte per code; the package holds them at their bit-width.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .integer import bit_pack, bit_unpack, packed_bytes

PACKAGE_NAME = "switchable.npz"


@dataclass(frozen=True)
class PackedCodes:
    """How an integer initializer is stored: ``value = offset + stride · p`` with ``p`` in
    ``0 .. 2^bits − 1``."""

    bits: int
    offset: int
    stride: int


@dataclass
class ModeSize:
    integer_weights: int = 0     # bytes of bit-packed integer codes
    integer_count: int = 0       # how many integer codes
    float_bytes: int = 0         # float32 tensors: scales, folded BN, full-precision layers
    float_count: int = 0

    @property
    def total(self) -> int:
        return self.integer_weights + self.float_bytes


def _blob_key(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def write_package(path: Path, models: dict[str, onnx.ModelProto], packed: dict[str, dict[str, PackedCodes]]) -> dict:
    """Write ``models`` (mode label → ONNX model) to one package; ``packed[label][name]``
    says which initializers are integer codes and how to pack them. Returns each mode's
    :class:`ModeSize` and the package's bytes on disk."""
    blobs: dict[str, bytes] = {}
    manifest: dict = {"format": "qdnn-switchable-1", "modes": {}}
    sizes: dict[str, ModeSize] = {}
    graphs: dict[str, bytes] = {}
    for label, model in models.items():
        size = ModeSize()
        entries = []
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            how = packed.get(label, {}).get(init.name)
            if how is not None:
                levels = (arr.astype(np.int64) - how.offset) // how.stride
                data = bit_pack(levels.astype(np.uint8), how.bits)
                size.integer_weights += packed_bytes(arr.size, how.bits)
                size.integer_count += arr.size
                entry = {"packed": [how.bits, how.offset, how.stride]}
            else:
                data = np.ascontiguousarray(arr).tobytes()
                size.float_bytes += len(data)
                size.float_count += arr.size
                entry = {}
            key = _blob_key(data)
            blobs.setdefault(key, data)
            entries.append({"name": init.name, "type": init.data_type, "shape": list(arr.shape), "blob": key, **entry})
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        del skeleton.graph.initializer[:]
        graphs[label] = skeleton.SerializeToString()
        manifest["modes"][label] = entries
        sizes[label] = size
    manifest["graphs"] = {label: f"graph_{i}" for i, label in enumerate(graphs)}
    arrays = {"manifest": np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)}
    arrays.update({f"graph_{i}": np.frombuffer(g, dtype=np.uint8) for i, g in enumerate(graphs.values())})
    arrays.update({f"blob_{k}": np.frombuffer(v, dtype=np.uint8) for k, v in blobs.items()})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return {"modes": sizes, "bytes": path.stat().st_size, "blob_bytes": sum(len(v) for v in blobs.values())}


def mode_model(path: Path, label: str) -> onnx.ModelProto:
    """The ONNX model of one mode, rebuilt from the package."""
    with np.load(path) as z:
        manifest = json.loads(z["manifest"].tobytes())
        if label not in manifest["modes"]:
            raise ValueError(f"{path} has no mode {label!r}: it holds {', '.join(manifest['modes'])}")
        model = onnx.load_model_from_string(z[manifest["graphs"][label]].tobytes())
        for entry in manifest["modes"][label]:
            data = z[f"blob_{entry['blob']}"].tobytes()
            dtype, shape = helper.tensor_dtype_to_np_dtype(entry["type"]), entry["shape"]
            count = int(np.prod(shape)) if shape else 1
            if "packed" in entry:
                bits, offset, stride = entry["packed"]
                arr = (offset + stride * bit_unpack(data, bits, count).astype(np.int64)).astype(dtype)
            else:
                arr = np.frombuffer(data, dtype=dtype)
            model.graph.initializer.append(numpy_helper.from_array(arr.reshape(shape), entry["name"]))
    return model


__all__ = ["PACKAGE_NAME", "PackedCodes", "ModeSize", "write_package", "mode_model"]
