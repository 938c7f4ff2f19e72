"""Aten operations dispatched per training step (a CPU-side proxy for GPU kernel launches):
N quantizable ResNet-20 runs stepped one after another (per mode, or mode-batched) against
the same N runs as one pack. Each top-level aten op of the step is counted once.

    python scripts/ops_per_step.py --runs 1,4,9
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from torch.profiler import profile

from qdnn_cli.bench.batching import _runs, packed_step, sequential_step
from qdnn_cli.engine.losses import QuantizableLoss


def aten_ops(step) -> int:
    step()  # warm: caches, lazily built constants
    with profile() as prof:
        step()
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="1,4,9")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    modes, loss = [32, 8, 4, 3, 2], QuantizableLoss()
    for n in (int(v) for v in args.runs.split(",")):
        runs = _runs(n, "resnet20", modes, args.batch, torch.device("cpu"), True)
        per_mode = aten_ops(sequential_step(runs, modes, loss, contextlib.nullcontext, False))
        batched = aten_ops(sequential_step(runs, modes, loss, contextlib.nullcontext, True))
        packed = aten_ops(packed_step(runs, modes, loss, contextlib.nullcontext))
        print(f"{n} runs: aten ops per step: one after another per mode {per_mode}, "
              f"one after another mode-batched {batched}, one pack {packed}")


if __name__ == "__main__":
    main()
