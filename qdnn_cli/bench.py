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


def end_to_end(images: int, device: str, amp: str = "none", channels_last: bool = False, epochs: int = 1) -> dict:
    """One real engine run (``qdnn train``'s code path) on an in-memory CIFAR-sized set:
    ResNet-20, 100 classes, 32x32, batch 128, all five modes. Returns the last epoch's
    train images/s (images × modes trained per second is B times this), data-time share,
    and epoch seconds."""
    import csv
    import tempfile
    from pathlib import Path

    from .config import compose
    from .engine import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("cifar100", ["data=synthetic", f"data.train_size={images}", "data.val_size=500",
                                   "data.image_size=32", "data.num_classes=100", "data.crop_padding=4",
                                   f"trainer.epochs={epochs}", f"trainer.device={device}", f"trainer.amp={amp}",
                                   f"trainer.channels_last={str(channels_last).lower()}", "trainer.progress=false",
                                   f"out_dir={tmp}"])
        run_training(cfg, Path(tmp), [])
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "train" and int(r["epoch"]) == epochs]
    # per-mode seconds are measured on CPU; the epoch wall time is what a user waits for
    epoch_s = max(float(r["seconds"]) for r in rows) if device == "cuda" else sum(float(r["seconds"]) for r in rows)
    return {"train_images_per_s": images / epoch_s, "epoch_seconds": epoch_s,
            "data_time_share": float(rows[0]["data_time_share"]),
            "per_mode_images_per_s": {int(r["mode"]): float(r["images_per_s"]) for r in rows}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--modes", default="2,3,4,8,32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--e2e-images", type=int, default=2560, help="images in the end-to-end epoch (0 skips it)")
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
    if args.e2e_images:
        e2e = end_to_end(args.e2e_images, "cpu")
        print(f"end-to-end CPU epoch ({args.e2e_images} in-memory 32x32 images, ResNet-20, all {b} modes, batch 128):")
        print(f"  train_images_per_s = {e2e['train_images_per_s']:.1f}  (x{b} modes = "
              f"{e2e['train_images_per_s'] * b:.1f} image-passes/s)")
        print("  per_mode_images_per_s = " + ", ".join(f"{m}:{v:.0f}" for m, v in sorted(e2e["per_mode_images_per_s"].items())))
        share = e2e["data_time_share"]
        print(f"  data_time_share = {share:.4f}  (target <= 0.05: {'met' if share <= 0.05 else 'NOT met'})")
        ratios["cpu_train_images_per_s"] = e2e["train_images_per_s"]
        ratios["cpu_data_time_share"] = share
    if torch.cuda.is_available():
        # warm-up epoch first (cuDNN autotune, allocator), then the timed one
        g = end_to_end(50_000, "cuda", amp="bf16", channels_last=True, epochs=2)
        print(f"CUDA ({torch.cuda.get_device_name()}): CIFAR-100 ResNet-20, 5 modes, 50k images, batch 128, bf16:")
        print(f"  epoch_seconds = {g['epoch_seconds']:.2f}  (target <= 5: {'met' if g['epoch_seconds'] <= 5 else 'NOT met'})")
        print(f"  data_time_share = {g['data_time_share']:.4f}")
        ratios["cuda_epoch_seconds"] = g["epoch_seconds"]
    else:
        print("CUDA: not available on this machine; GPU epoch time not measured")
    return ratios


if __name__ == "__main__":
    main()
