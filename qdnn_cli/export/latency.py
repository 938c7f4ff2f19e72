"""``qdnn bench-export``: ONNX Runtime CPU latency of each exported mode against FP.

The modes are timed interleaved (one repeat of every mode, then the next round), so a
machine that slows down mid-run slows every mode alike; the figure is the median, and
the ratio to the FP model is taken within the same run.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from ..engine.rundir import write_csv
from .command import ExportError, require_onnx


def bench_export(folder: Path, threads: int = 2, repeats: int = 20, batches=(1, 32), say=print,
                 runtime: str = "onnxruntime") -> list[dict]:
    """Median latency per mode and batch size in ``runtime``; merged into ``export.csv``
    (columns named by runtime for OpenVINO) and returned."""
    require_onnx()
    from . import runtimes

    runtimes.require(runtime)
    folder = Path(folder)
    manifest = folder / "export.json"
    if not manifest.exists():
        hint = folder / "export" if (folder / "config.yaml").is_file() else folder  # a run: its own export folder
        raise ExportError(f"{folder} is not a qdnn export (no export.json): run `qdnn export RUN --out {hint}` first")
    summary = json.loads(manifest.read_text())
    rows = summary["modes"]
    if threads < 1 or repeats < 1:
        raise ExportError("--threads and --repeats must be at least 1")
    sessions = {}
    for row in rows:
        path = folder / f"{row['mode']}.onnx"
        if not path.exists():
            raise ExportError(f"{path} is missing: export again")
        sessions[row["mode"]] = runtimes.load(runtime, path, threads)
    rng = np.random.default_rng(0)
    shape = summary["input_shape"]
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        times: dict[str, list[float]] = {m: [] for m in sessions}
        for s in sessions.values():  # warm-up: allocations and kernel selection
            for _ in range(3):
                s(x)
        for _ in range(repeats):
            for mode, s in sessions.items():
                start = time.perf_counter()
                s(x)
                times[mode].append(1000 * (time.perf_counter() - start))
        fp = statistics.median(times["fp"]) if "fp" in times else None
        prefix = "" if runtime == "onnxruntime" else f"{runtime}_"
        for row in rows:
            median = statistics.median(times[row["mode"]])
            row[f"{prefix}latency_b{batch}_ms"] = round(median, 4)
            row[f"{prefix}latency_b{batch}_vs_fp"] = round(median / fp, 4) if fp else None
            say(f"{row['mode']}: {runtime}, batch {batch}: {median:.3f} ms median of {repeats}"
                + (f" ({median / fp:.2f}x FP)" if fp else ""))
    for row in rows:
        row["bench_threads"] = threads
        row["bench_repeats"] = repeats
    summary["modes"] = rows
    summary.setdefault("benches", {})[runtime] = {"threads": threads, "repeats": repeats, "batches": list(batches),
                                                  "version": runtimes.version(runtime),
                                                  "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_csv(folder / "export.csv", rows)
    manifest.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return rows
