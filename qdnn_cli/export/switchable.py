"""Switch bit modes at run time without reloading: one ONNX Runtime session per mode, all
built once from the switchable package, so a device trades accuracy for speed by naming a
mode per call.

    from qdnn_cli.export.switchable import SwitchableSession
    net = SwitchableSession("deploy/switchable.npz", threads=1)
    logits = net.run(images, mode="4bit")      # images: N×C×H×W float32, normalised
    logits = net.run(images, mode="2bit")      # no reload: the 2-bit session is already built
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .command import ExportError, require_onnx
from .runtimes import ort_options
from .package import mode_model


class SwitchableSession:
    """Every mode of a package (or ``modes`` of it) as a ready ONNX Runtime session."""

    def __init__(self, package: str | Path, modes: list[str] | None = None, threads: int = 1):
        require_onnx()
        import onnxruntime as ort

        path = Path(package)
        if path.is_dir():
            path = path / "switchable.npz"
        if not path.is_file():
            raise ExportError(f"{path} does not exist: give an export folder or its switchable.npz")
        with np.load(path) as z:
            held = list(json.loads(z["manifest"].tobytes())["modes"])
        modes = modes or held
        missing = [m for m in modes if m not in held]
        if missing:
            raise ExportError(f"{path} has no mode {missing[0]!r}: it holds {', '.join(held)}")
        self.sessions = {}
        for label in modes:
            self.sessions[label] = ort.InferenceSession(mode_model(path, label).SerializeToString(),
                                                        ort_options(threads),
                                                        providers=["CPUExecutionProvider"])
        self.input = next(iter(self.sessions.values())).get_inputs()[0].name

    @property
    def modes(self) -> list[str]:
        return list(self.sessions)

    def run(self, images: np.ndarray, mode: str) -> np.ndarray:
        """The logits of ``images`` in ``mode`` (e.g. ``"fp"``, ``"4bit"``, ``"2bit"``)."""
        if mode not in self.sessions:
            raise ExportError(f"no mode {mode!r} in this session: it has {', '.join(self.sessions)}")
        return self.sessions[mode].run(None, {self.input: np.ascontiguousarray(images, dtype=np.float32)})[0]


def switch_cost(session: SwitchableSession, images: np.ndarray, rounds: int = 10) -> dict:
    """Per mode: median latency of the first call after a switch from another mode, and of
    a call in the same mode right after it (warm), in ms, modes cycled round-robin."""
    modes = session.modes
    for m in modes:
        session.run(images, m)
    first = {m: [] for m in modes}
    warm = {m: [] for m in modes}
    for _ in range(rounds):
        for m in modes:  # every call here follows a call in another mode
            t0 = time.perf_counter()
            session.run(images, m)
            first[m].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.run(images, m)
            warm[m].append(time.perf_counter() - t0)
    return {m: {"after_switch_ms": 1000 * float(np.median(first[m])), "warm_ms": 1000 * float(np.median(warm[m]))}
            for m in modes}


__all__ = ["SwitchableSession", "switch_cost"]
