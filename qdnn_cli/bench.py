"""``make bench``: training-step cost of the quantizable network, measured side by side.

All steps are timed in one process, interleaved round-robin over repeats, and reported
as medians, so machine noise hits every variant alike. Ratios:

* quant_overhead = step(4-bit) / step(FP)                  (target ≤ 1.15)
* joint_ratio    = step(joint over B modes) / (B · step(FP)) (target ≤ 1.15; floor = 1)
* speedup_vs_naive = step(naive joint) / step(joint)        (target ≥ 1.6)

The naive joint step is the way most research code does it: Python round/clamp/detach
straight-through quantizers and one full-size teacher forward kept alive for the loss.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from .engine.loop import backward_modes
from .engine.losses import QuantizableLoss
from .models import build_model
from .quant import QuantSpec, set_bit_mode


def _step_fn(model, modes, loss_fn, x, y, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        backward_modes(model, model, x, y, modes, loss_fn, True)
        opt.step()
    return step


def _naive_joint_fn(model, modes, loss_fn, x, y, opt):
    """Research-code style: all modes' graphs alive, one summed loss, one backward."""
    def step():
        opt.zero_grad(set_to_none=True)
        logits = {}
        for m in modes:
            set_bit_mode(model, m)
            logits[m] = model(x)
        loss = loss_fn.total(logits, y)
        loss.backward()
        opt.step()
    return step


def measure(fns: dict, repeats: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--modes", default="2,3,4,8,32")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    modes = sorted((int(b) for b in args.modes.split(",")), reverse=True)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    loss_fn = QuantizableLoss()

    def make(weight, act):
        model = build_model(args.model, QuantSpec(tuple(modes), weight, act), num_classes=100).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    fast, opt = make("dorefa", "dorefa")
    naive, nopt = make("naive", "naive")
    xin = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    fns = {
        "fp": _step_fn(fast, [32], loss_fn, xin, y, opt),
        "4bit": _step_fn(fast, [4], loss_fn, xin, y, opt),
        "joint": _step_fn(fast, modes, loss_fn, xin, y, opt),
        "naive_4bit": _step_fn(naive, [4], loss_fn, xin, y, nopt),
        "naive_joint": _naive_joint_fn(naive, modes, loss_fn, xin, y, nopt),
    }
    print(f"model={args.model} batch={args.batch} modes={modes} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} channels_last={args.channels_last} torch={torch.__version__}")
    t = measure(fns, args.repeats)
    for k, v in t.items():
        print(f"  step[{k:<11}] {v * 1000:8.1f} ms")
    b = len(modes)
    ratios = {
        "quant_overhead": t["4bit"] / t["fp"],
        "joint_ratio": t["joint"] / (b * t["fp"]),
        "speedup_vs_naive": t["naive_joint"] / t["joint"],
        "naive_quant_overhead": t["naive_4bit"] / t["fp"],
        "naive_joint_ratio": t["naive_joint"] / (b * t["fp"]),
    }
    targets = {"quant_overhead": ("<=", 1.15), "joint_ratio": ("<=", 1.15), "speedup_vs_naive": (">=", 1.6)}
    for k, v in ratios.items():
        tgt = targets.get(k)
        mark = ""
        if tgt:
            ok = v <= tgt[1] if tgt[0] == "<=" else v >= tgt[1]
            mark = f"  (target {tgt[0]} {tgt[1]}: {'met' if ok else 'NOT met'})"
        print(f"{k} = {v:.3f}{mark}")
    return ratios


if __name__ == "__main__":
    main()
