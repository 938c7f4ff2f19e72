"""Deployment: a trained run's bit modes as ONNX models that ONNX Runtime runs with
integer kernels, a switchable package of every mode, parity checks and latency.

Needs the ``export`` extra (onnx, onnxruntime); nothing here is imported unless a user
exports. Layout: :mod:`.integer` (integer forms of the quantizers, bit-packing),
:mod:`.graph` (the ONNX builder), :mod:`.lower` (models to graphs), :mod:`.package`
(the switchable file), :mod:`.command` (``qdnn export``), :mod:`.latency`
(``qdnn bench-export``).
"""
from .command import ExportError, ExportOptions, export_checkpoint, require_onnx

__all__ = ["ExportError", "ExportOptions", "export_checkpoint", "require_onnx"]
