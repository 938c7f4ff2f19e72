"""Host overhead of a joint step, measured where compute is negligible (CPU proxy).

A tiny network on a batch of 2 8x8 images makes the step's cost almost all per-call
overhead (Python, autograd, dynamo guards, graph calls), the regime a CIFAR ResNet-20
step is in on a large GPU (see experiments/performance). Compares, side by side:
eager per-mode steps, per-mode compiled graphs (trainer.compile_scope=mode) and one
compiled graph for the whole step (compile_scope=step). Usage:
    python scripts/host_overhead_cpu.py [steps]
"""
import statistics
import sys
import time

import torch

from qdnn_cli.engine.compile import compile_model, compile_step, whole_step
from qdnn_cli.engine.step import mode_losses
from qdnn_cli.engine.losses import QuantizableLoss
from qdnn_cli.models import build_model
from qdnn_cli.quant import QuantSpec

MODES = [32, 8, 4, 3, 2]


def variant(kind: str):
    torch.manual_seed(0)
    model = build_model("tiny", QuantSpec(tuple(MODES)), 10, 3, width=8).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    loss_fn = QuantizableLoss()
    if kind == "step":
        fn = compile_step(whole_step(model, loss_fn, True), 1)

        def step():
            opt.zero_grad(set_to_none=True)
            fn(x, y, tuple(MODES))[0].backward()
            opt.step()
        return step
    forward = compile_model(model, len(MODES)) if kind == "mode" else model

    def step():
        opt.zero_grad(set_to_none=True)
        mode_losses(model, x, y, MODES, loss_fn, True, forward, backward=torch.Tensor.backward)
        opt.step()
    return step


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    torch.set_num_threads(1)
    # build all first: compile_model / compile_step reset dynamo when called, and
    # compilation itself is lazy, so the warm-ups below compile every variant's graphs
    fns = {kind: variant(kind) for kind in ("eager", "mode", "step")}
    for kind, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        print(f"{kind:>5}: warm-up {time.perf_counter() - t0:.1f} s")
    times = {k: [] for k in fns}
    for r in range(7):  # interleaved rounds, order rotated, medians
        order = list(fns)[r % 3:] + list(fns)[:r % 3]
        for kind in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[kind]()
            times[kind].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>5}: {v * 1000:7.2f} ms per 5-mode step")
    print(f"per-mode graphs / eager = {med['mode'] / med['eager']:.2f}; "
          f"whole-step graph / eager = {med['step'] / med['eager']:.2f}; "
          f"whole-step / per-mode = {med['step'] / med['mode']:.2f}")


if __name__ == "__main__":
    main()
