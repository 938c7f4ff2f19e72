"""``make bench`` (``python -m qdnn_cli.bench``): training-step cost of the quantizable network, measured side by side.

All steps are timed in one process, interleaved round-robin over repeats, and reported
as medians, so machine noise hits every variant alike. Ratios:

* quant_overhead = step(4-bit) / step(FP)                  (target ≤ 1.15)
* joint_ratio    = step(joint over B modes) / (B · step(FP)) (target ≤ 1.15; floor = 1)
* speedup_vs_naive = step(naive joint) / step(joint)        (target ≥ 1.6)
* mode_batch_ratio, pack_ratio_N: the mode-batched step and N packed runs against
  today's step (:mod:`qdnn_cli.bench.batching`), on the CPU and, where present, on CUDA
* bf16_step_speedup: the joint step in bf16 autocast against float32 on the CPU, with
  both against the CPU's own matmul rates (:mod:`qdnn_cli.bench.bf16`)

(Longer than the ~350 lines we aim for: every variant, CPU and CUDA, lives in this one
module so they are all timed side by side in one process, as the ratios require.)

The naive joint step is the way most research code does it: Python round/clamp/detach
straight-through quantizers and one full-size teacher forward kept alive for the loss.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from . import batching
from .profiling import gpu_busy_ms
from ..engine.compile import compile_model, compile_step, whole_step
from ..engine.step import mode_losses
from ..engine.losses import QuantizableLoss
from ..models import build_model
from ..quant import QuantSpec, set_bit_mode


def _step_fn(model, modes, loss_fn, x, y, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        mode_losses(model, x, y, modes, loss_fn, True, backward=torch.Tensor.backward)
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


def _compiled_step_fn(make, modes, loss_fn, x, y):
    """The engine's ``trainer.compile=true trainer.compile_scope=step`` joint step, compiled
    (and its compile time printed) before the timed rounds."""
    model, opt = make("dorefa", "dorefa")
    graph = compile_step(whole_step(model, loss_fn, True), 1, "default")

    def step():
        opt.zero_grad(set_to_none=True)
        graph(x, y, tuple(modes))[0].backward()
        opt.step()
    t0 = time.perf_counter()
    step()
    print(f"  compiled the whole joint step for the CPU in {time.perf_counter() - t0:.0f} s")
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


def end_to_end(images: int, device: str, amp: str = "none", channels_last: bool = False, epochs: int = 1,
               compile: str | bool = False, compile_scope: str = "mode") -> dict:
    """One real engine run (``qdnn train``'s code path) on an in-memory CIFAR-sized set:
    ResNet-20, 100 classes, 32x32, batch 128, all five modes. Returns the last epoch's
    train images/s (images × modes trained per second is B times this), data-time share,
    epoch seconds (training wall time of that epoch) and per-mode images/s."""
    import csv
    import tempfile
    from pathlib import Path

    from ..config import compose
    from ..engine import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("cifar100", ["data=synthetic", f"data.train_size={images}", "data.val_size=500",
                                   "data.image_size=32", "data.num_classes=100", "data.crop_padding=4",
                                   f"trainer.epochs={epochs}", f"trainer.device={device}", f"trainer.amp={amp}",
                                   f"trainer.channels_last={str(channels_last).lower()}", "trainer.progress=false",
                                   f"trainer.compile={str(compile).lower() if isinstance(compile, bool) else compile}",
                                   f"trainer.compile_scope={compile_scope}",
                                   f"out_dir={tmp}"])
        run_training(cfg, Path(tmp), [])
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "train" and int(r["epoch"]) == epochs]
    epoch_s = float(rows[0]["epoch_seconds"])
    return {"train_images_per_s": images / epoch_s, "epoch_seconds": epoch_s,
            "data_time_share": float(rows[0]["data_time_share"]),
            "per_mode_images_per_s": {int(r["mode"]): float(r["images_per_s"]) for r in rows}}


def device_steps(modes: list[int], batch: int, steps: int, deadline: float, device: str = "cuda",
                 only: tuple[str, ...] | None = None, profile: bool = False) -> dict:
    """Median joint-step time (s) on a device for eager and compiled variants, same batch.

    Each variant gets a fresh ResNet-20; its warm-up (which includes compilation, one
    graph per bit mode) is timed separately. Synchronised wall clock around ``steps``
    steps, three rounds, median of the per-step means.
    """
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (batch,), device=dev)
    loss_fn = QuantizableLoss()
    bf16 = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    variants = [  # name, weight/act quantizer, amp, channels_last, compile mode, modes
        ("eager_fp32", "dorefa", None, False, None, modes),
        ("eager_bf16_cl", "dorefa", bf16, True, None, modes),
        ("eager_bf16_cl_fp_only", "dorefa", bf16, True, None, [32]),
        ("eager_bf16_cl_4bit_only", "dorefa", bf16, True, None, [4]),
        ("naive_bf16_cl", "naive", bf16, True, None, modes),
        ("compiled_ro_bf16_cl", "dorefa", bf16, True, "reduce-overhead", modes),
        ("compiled_bf16_cl", "dorefa", bf16, True, "default", modes),
        ("compiled_step_ro_bf16_cl", "dorefa", bf16, True, "reduce-overhead/step", modes),
    ]
    out = {}
    for name, q, amp, cl, comp, ms in variants:
        if only is not None and name not in only:
            continue
        if time.perf_counter() > deadline:
            print(f"  {name}: skipped (bench time budget spent)")
            continue
        model = build_model("resnet20", QuantSpec(tuple(modes), q, q), num_classes=100).to(dev).train()
        xin = x
        if cl:
            model = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        amp_ctx = amp or contextlib.nullcontext
        one_graph = bool(comp) and comp.endswith("/step")
        comp_mode = comp.split("/")[0] if comp else None
        forward = compile_model(model, len(modes), comp_mode) if comp and not one_graph else model
        step_fn = None
        if one_graph:
            step_fn = compile_step(whole_step(model, loss_fn, True, amp_ctx), 1, comp_mode)

        def step():
            if comp_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            if step_fn is not None:
                step_fn(xin, y, tuple(ms))[0].backward()
            else:
                mode_losses(model, xin, y, ms, loss_fn, True, forward, amp_ctx, backward=torch.Tensor.backward)
            opt.step()
        try:
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            sync()
            warm = time.perf_counter() - t0
            per_step = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                sync()
                per_step.append((time.perf_counter() - t0) / steps)
        except Exception as e:  # report and go on: one broken variant must not hide the rest
            print(f"  {name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        out[name] = statistics.median(per_step)
        print(f"  step[{name:<24}] {out[name] * 1000:8.2f} ms   (warm-up incl. compile {warm:6.1f} s)")
        if profile and dev.type == "cuda" and comp:
            busy = gpu_busy_ms(step, 5)
            if busy is not None:
                print(f"    GPU kernel time per step = {busy:.2f} ms of {out[name] * 1000:.2f} ms wall "
                      f"({busy / (out[name] * 1000):.0%} busy): the rest is host-side overhead")
                out[name + "_gpu_busy"] = busy / 1000
    return out


def cpu_section(args, modes, make, x, y, loss_fn) -> dict:
    """The core issue's step ratios and the end-to-end in-memory epoch, on the CPU."""
    fast, opt = make("dorefa", "dorefa")
    naive, nopt = make("naive", "naive")
    other_layout, copt = make("dorefa", "dorefa", not args.channels_last)
    xin = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    xother = x if args.channels_last else x.contiguous(memory_format=torch.channels_last)
    fns = {
        "fp": _step_fn(fast, [32], loss_fn, xin, y, opt),
        "4bit": _step_fn(fast, [4], loss_fn, xin, y, opt),
        "joint": _step_fn(fast, modes, loss_fn, xin, y, opt),
        "naive_4bit": _step_fn(naive, [4], loss_fn, xin, y, nopt),
        "naive_joint": _naive_joint_fn(naive, modes, loss_fn, xin, y, nopt),
        "joint_other": _step_fn(other_layout, modes, loss_fn, xother, y, copt),
    }
    if args.cpu_compiled:  # opt-in: inductor's CPU compile of ResNet-20 takes minutes on 2 cores
        fns["joint_compiled"] = _compiled_step_fn(make, modes, loss_fn, xin, y)
    print(f"model={args.model} batch={args.batch} modes={modes} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} channels_last={args.channels_last} torch={torch.__version__}")
    t = measure(fns, args.repeats)
    other = "contiguous" if args.channels_last else "channels_last"
    for k, v in t.items():
        print(f"  step[{k if k != 'joint_other' else 'joint ' + other:<14}] {v * 1000:8.1f} ms")
    b = len(modes)
    ratios = {
        "quant_overhead": t["4bit"] / t["fp"],
        "joint_ratio": t["joint"] / (b * t["fp"]),
        "speedup_vs_naive": t["naive_joint"] / t["joint"],
        "naive_quant_overhead": t["naive_4bit"] / t["fp"],
        "naive_joint_ratio": t["naive_joint"] / (b * t["fp"]),
        f"joint_time_vs_{other}": t["joint"] / t["joint_other"],
    }
    if "joint_compiled" in t:
        ratios["joint_compiled_vs_eager"] = t["joint_compiled"] / t["joint"]
        ratios["speedup_vs_naive_compiled"] = t["naive_joint"] / t["joint_compiled"]
    targets = {"quant_overhead": ("<=", 1.15), "joint_ratio": ("<=", 1.15), "speedup_vs_naive": (">=", 1.6)}
    for k, v in ratios.items():
        tgt = targets.get(k)
        mark = ""
        if tgt:
            ok = v <= tgt[1] if tgt[0] == "<=" else v >= tgt[1]
            mark = f"  (target {tgt[0]} {tgt[1]}: {'met' if ok else 'NOT met'})"
        print(f"{k} = {v:.3f}{mark}")
    if args.e2e_images:
        e2e = end_to_end(args.e2e_images, "cpu", channels_last=True)
        print(f"end-to-end CPU epoch ({args.e2e_images} in-memory 32x32 images, ResNet-20, all {b} modes, batch 128, "
              "channels_last):")
        print(f"  train_images_per_s = {e2e['train_images_per_s']:.1f}  (x{b} modes = "
              f"{e2e['train_images_per_s'] * b:.1f} image-passes/s)")
        print("  per_mode_images_per_s = " + ", ".join(f"{m}:{v:.0f}" for m, v in sorted(e2e["per_mode_images_per_s"].items())))
        share = e2e["data_time_share"]
        print(f"  data_time_share = {share:.4f}  (target <= 0.05: {'met' if share <= 0.05 else 'NOT met'})")
        ratios["cpu_train_images_per_s"] = e2e["train_images_per_s"]
        ratios["cpu_data_time_share"] = share
    return ratios


def cuda_section(args, modes: list[int]) -> dict:
    """The real engine's 50k-image epoch first (the target's figure, so a time box never
    loses it), then the step variants side by side within ``--cuda-budget-s``."""
    b = len(modes)
    ratios = {}
    steps_per_epoch = -(-50_000 // args.batch)
    print(f"CUDA ({torch.cuda.get_device_name()}, torch {torch.__version__}): ResNet-20, batch {args.batch}, "
          f"{b} modes, joint step; epoch = {steps_per_epoch} steps (50k images)")
    comp = args.cuda_e2e_compile if args.cuda_e2e_compile != "false" else False
    if comp:
        # the real engine, warm-up epoch first (compile, cuDNN autotune, allocator), then the timed one
        try:
            g = end_to_end(50_000, "cuda", amp="bf16", channels_last=True, epochs=2, compile=comp,
                           compile_scope=args.cuda_e2e_scope)
        except Exception as e:
            print(f"  end-to-end with compile={comp} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}; "
                  "eager instead")
            comp = False
    if not comp:
        g = end_to_end(50_000, "cuda", amp="bf16", channels_last=True, epochs=2)
    print(f"  end-to-end (qdnn train path): 50k images, bf16, channels_last, compile={comp}"
          f"{f', compile_scope={args.cuda_e2e_scope}' if comp else ''}:")
    print(f"    epoch_seconds = {g['epoch_seconds']:.2f}  (target <= 5: {'met' if g['epoch_seconds'] <= 5 else 'NOT met'})")
    print(f"    data_time_share = {g['data_time_share']:.4f}  (target <= 0.05: "
          f"{'met' if g['data_time_share'] <= 0.05 else 'NOT met'})")
    print("    per_mode_images_per_s = " + ", ".join(f"{m}:{v:.0f}" for m, v in sorted(g["per_mode_images_per_s"].items())))
    ratios["cuda_epoch_seconds"] = g["epoch_seconds"]
    ratios["cuda_data_time_share"] = g["data_time_share"]

    only = tuple(args.cuda_variants.split(",")) if args.cuda_variants else None
    st = device_steps(modes, args.batch, 20, time.perf_counter() + args.cuda_budget_s, only=only, profile=args.profile)
    for k, v in st.items():
        ratios[f"cuda_step_ms_{k}"] = v * 1000
    if "eager_bf16_cl" in st and "eager_bf16_cl_fp_only" in st:
        fp = st["eager_bf16_cl_fp_only"]
        ratios["cuda_quant_overhead"] = st.get("eager_bf16_cl_4bit_only", float("nan")) / fp
        ratios["cuda_joint_ratio"] = st["eager_bf16_cl"] / (b * fp)
        if "naive_bf16_cl" in st:
            ratios["cuda_speedup_vs_naive"] = st["naive_bf16_cl"] / st["eager_bf16_cl"]
        print("  eager bf16: " + ", ".join(f"{k[5:]} = {ratios[k]:.3f}" for k in
                                           ("cuda_quant_overhead", "cuda_joint_ratio", "cuda_speedup_vs_naive") if k in ratios))
    for k in ("eager_fp32", "eager_bf16_cl", "compiled_bf16_cl", "compiled_ro_bf16_cl", "compiled_step_ro_bf16_cl"):
        if k in st:
            print(f"  step-based epoch estimate [{k}] = {st[k] * steps_per_epoch:.2f} s")
    if "naive_bf16_cl" in st and "compiled_ro_bf16_cl" in st:
        ratios["cuda_speedup_compiled_vs_naive"] = st["naive_bf16_cl"] / st["compiled_ro_bf16_cl"]
        print(f"  speedup of the compiled (CUDA graphs) step over the naive eager step = "
              f"{ratios['cuda_speedup_compiled_vs_naive']:.2f}")
    return ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--modes", default="2,3,4,8,32")
    p.add_argument("--contiguous", action="store_true",
                   help="time the steps in NCHW (default: channels_last, as the engine trains)")
    p.add_argument("--cpu-compiled", action="store_true",
                   help="also time the compiled whole joint step on the CPU (compiling takes minutes)")
    p.add_argument("--e2e-images", type=int, default=2560, help="images in the end-to-end epoch (0 skips it)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU section (e.g. on a GPU machine)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA section even where CUDA is present")
    p.add_argument("--cuda-budget-s", type=float, default=420, help="wall-clock budget of the CUDA step variants")
    p.add_argument("--cuda-e2e-compile", default="reduce-overhead",
                   help="trainer.compile of the end-to-end CUDA epoch (false for eager)")
    p.add_argument("--cuda-e2e-scope", default="step", choices=("mode", "step"),
                   help="trainer.compile_scope of the end-to-end CUDA epoch (step: one graph for all modes, "
                        "the setting that met the 5 s target on an H200)")
    p.add_argument("--cuda-variants", help="comma-separated subset of the CUDA step variants")
    p.add_argument("--profile", action="store_true", help="GPU kernel time per step of compiled variants")
    p.add_argument("--no-batching", action="store_true", help="skip the mode-batch and packed-runs section")
    p.add_argument("--no-precision", action="store_true", help="skip the float32-against-bf16 section on the CPU")
    p.add_argument("--bf16-anyway", action="store_true",
                   help="time the bf16 step even on a CPU without native bf16 (minutes per step)")
    p.add_argument("--pack-sizes", default="1,2,4,8", help="runs per pack to time on the CPU (CUDA: these and 16)")
    p.add_argument("--pack-batch", type=int, default=32, help="per-run batch of the packed-runs figures on the CPU")
    p.add_argument("--json", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    args.channels_last = not args.contiguous
    modes = sorted((int(b) for b in args.modes.split(",")), reverse=True)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    loss_fn = QuantizableLoss()

    def make(weight, act, channels_last=args.channels_last):
        model = build_model(args.model, QuantSpec(tuple(modes), weight, act), num_classes=100).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    ratios = {}
    sizes = tuple(int(n) for n in args.pack_sizes.split(","))
    if not args.no_cpu:
        ratios.update(cpu_section(args, modes, make, x, y, loss_fn))
        if not args.no_precision:
            from . import bf16

            ratios.update(bf16.run(tuple(modes), args.batch, max(3, args.repeats // 2), args.bf16_anyway))
        if not args.no_batching:
            ratios.update(batching.run("cpu", args.model, modes, args.batch, args.pack_batch, sizes,
                                         max(3, args.repeats // 2), args.channels_last))
    if torch.cuda.is_available() and not args.no_cuda:
        if not args.no_batching:  # first: the figures the batching work is judged by
            ratios.update(batching.run("cuda", args.model, modes, args.batch, args.batch,
                                         tuple(sorted(set(sizes) | {16})), 5, True, "bf16", profile=True))
        ratios.update(cuda_section(args, modes))
    else:
        print("CUDA: not available on this machine; GPU epoch time not measured")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(ratios, f, indent=1)
    return ratios


if __name__ == "__main__":
    main()
