"""The inference runtimes an export is checked and timed in: ONNX Runtime (the ``export``
extra) and OpenVINO (the ``openvino`` extra). Each gives a function ``images -> logits``
for one ``.onnx`` file at a number of threads."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError

RUNTIMES = ("onnxruntime", "openvino")
EXTRA = {"onnxruntime": "export", "openvino": "openvino"}


def installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def require(name: str) -> None:
    if name not in RUNTIMES:
        raise InputError(f"--runtime {name!r}: choose {' or '.join(RUNTIMES)}")
    if not installed(name):
        raise InputError(f"runtime {name} is not installed: pip install 'qdnn[{EXTRA[name]}]'")


def version(name: str) -> str:
    return __import__(name).__version__


def ort_options(threads: int):
    """ONNX Runtime session options: ``threads`` intra-op threads, quiet, and no spin-waiting
    after a run: with several sessions alive (modes timed interleaved, a SwitchableSession)
    one session's spinning threads would take the cores the next one runs on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def load(name: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A ready session of ``path`` in runtime ``name``."""
    require(name)
    if name == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), ort_options(threads), providers=["CPUExecutionProvider"])
        name_in = session.get_inputs()[0].name
        return lambda x: session.run(None, {name_in: x})[0]
    import openvino as ov

    # float32 as the model says: on a CPU with AMX or AVX-512 BF16, OpenVINO otherwise runs
    # the float parts in bf16 (its default there), which no parity check of a float32
    # export can pass and which would time another model than the file's
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: request.infer({0: x})[output].copy()


__all__ = ["RUNTIMES", "installed", "require", "load", "version"]
