"""``make bench``, batching section: the mode-batched step and packed runs against today's.

Measured side by side in one process, interleaved round-robin, medians (machine noise
hits every variant alike). Ratios (< 1: the batched form is faster):

* mode_batch_ratio = step(all modes in one forward) / step(mode after mode)   (CPU target ≤ 1.0)
* pack_ratio_N     = step(N runs packed) / (N runs' steps one after another)  (CPU target at N=4: ≤ 0.9)
* pack_ratio_vs_mode_batch_N: the same against N mode-batched steps in sequence

Each figure also comes with the step's achieved FLOP/s (convolution and matmul FLOPs
of forward + backward, counted once by ``torch.utils.flop_counter``) and, on CUDA, the
share of the step's wall time the GPU spends in kernels (``torch.profiler``).
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

from ..engine.losses import QuantizableLoss
from ..engine.pack import pack_backward
from ..engine.step import mode_losses
from ..models import build_model
from ..quant import QuantSpec


def _runs(n: int, model: str, modes, batch: int, dev: torch.device, channels_last: bool):
    """n independent quantizable runs: each its own model (seed i), optimizer and batch."""
    runs = []
    for i in range(n):
        torch.manual_seed(i)
        m = build_model(model, QuantSpec(tuple(modes), weight_scale="mean_abs"), num_classes=100).to(dev).train()
        x = torch.randn(batch, 3, 32, 32, device=dev)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (batch,), device=dev)
        runs.append((m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), x, y))
    return runs


def sequential_step(runs, modes, loss_fn, amp_ctx, batched: bool):
    """Each run's joint step in turn (what N runs one after another cost per step)."""
    def step():
        for m, opt, x, y in runs:
            opt.zero_grad(set_to_none=True)
            mode_losses(m, x, y, modes, loss_fn, True, amp_ctx=amp_ctx, backward=torch.Tensor.backward,
                        batched=batched)
            opt.step()
    return step


def packed_step(runs, modes, loss_fn, amp_ctx, compile_mode: str | None = None):
    """The runs as one pack: one forward, one backward, each run's optimizer step;
    ``compile_mode``: the pack's forward and losses compiled whole (as a compiled pack trains)."""
    models, opts, xs, ys = zip(*runs)
    losses, cudagraphs = None, False
    if compile_mode:
        from ..engine.compile import compile_step
        from ..engine.pack import pack_losses

        losses = compile_step(pack_losses, 2, compile_mode)
        cudagraphs = xs[0].is_cuda and compile_mode in ("reduce-overhead", "max-autotune")
    modes_per_run = tuple(tuple(modes) for _ in runs)

    def step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        pack_backward(list(models), list(xs), list(ys), modes_per_run, (loss_fn,) * len(runs),
                      (True,) * len(runs), amp_ctx, losses)
        for opt in opts:
            opt.step()
    return step


def timed(fns: dict, repeats: int, sync, steps: int = 1) -> dict:
    """Median seconds per step of each function, interleaved (order reversed every round)."""
    for fn in fns.values():
        fn()
        fn()
    sync()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[k]()
            sync()
            times[k].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def step_flops(fn) -> float:
    """Convolution + matmul FLOPs of one call of ``fn`` (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def run(device: str = "cpu", model: str = "resnet20", modes=(32, 8, 4, 3, 2), batch: int = 128,
        pack_batch: int = 32, pack_sizes=(1, 2, 4, 8), repeats: int = 5, channels_last: bool = True,
        amp: str = "none", profile: bool = False, compiled_sizes=(), compile_mode: str = "reduce-overhead") -> dict:
    """Every figure of the section on one device; prints as it goes, returns the ratios."""
    from .profiling import gpu_busy_ms
    from ..engine.device import keep_freed_cpu_memory

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_cpu_memory()  # what the engine does for a mode-batched run on the CPU
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps = 10 if cuda else 1
    amp_ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
    loss_fn = QuantizableLoss()
    modes = list(modes)
    label = f"{device}, {model}, modes {modes}, channels_last={channels_last}, amp={amp}"
    out = {}

    one = _runs(1, model, modes, batch, dev, channels_last)
    fns = {"per_mode": sequential_step(one, modes, loss_fn, amp_ctx, False),
           "mode_batch": sequential_step(one, modes, loss_fn, amp_ctx, True)}
    t = timed(fns, repeats, sync, steps)
    flops = step_flops(fns["per_mode"])
    print(f"mode batch ({label}, batch {batch}):")
    for k, v in t.items():
        print(f"  step[{k:<10}] {v * 1000:9.1f} ms   {flops / v / 1e12:7.3f} TFLOP/s")
    out[f"{dev.type}_mode_batch_ratio"] = t["mode_batch"] / t["per_mode"]
    target = "  (target <= 1.0: " + ("met)" if out[f"{dev.type}_mode_batch_ratio"] <= 1.0 else "NOT met)") \
        if not cuda else ""
    print(f"{dev.type}_mode_batch_ratio = {out[f'{dev.type}_mode_batch_ratio']:.3f}{target}")
    if profile and cuda:
        for k, fn in fns.items():
            busy = gpu_busy_ms(fn, 5)
            if busy is not None:
                out[f"cuda_busy_share_{k}"] = busy / 1000 / t[k]
                print(f"  GPU kernels busy [{k}] = {busy / 1000 / t[k]:.0%} of the step")

    print(f"packed runs ({label}, batch {pack_batch} per run):")
    for n in pack_sizes:
        runs = _runs(n, model, modes, pack_batch, dev, channels_last)
        fns = {"sequential": sequential_step(runs, modes, loss_fn, amp_ctx, False),
               "sequential_mode_batch": sequential_step(runs, modes, loss_fn, amp_ctx, True),
               "packed": packed_step(runs, modes, loss_fn, amp_ctx)}
        try:
            if n in compiled_sizes:
                fns["packed_compiled"] = packed_step(runs, modes, loss_fn, amp_ctx, compile_mode)
                t0 = time.perf_counter()
                fns["packed_compiled"]()
                sync()
                print(f"  N={n:<2} compiled the pack step ({compile_mode}) in {time.perf_counter() - t0:.0f} s")
            t = timed(fns, repeats, sync, steps)
        except torch.OutOfMemoryError:
            print(f"  N={n:<2}: out of device memory, skipped")
            break
        except Exception as e:  # noqa: BLE001 - report and go on: one broken variant must not hide the rest
            print(f"  N={n:<2}: FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        flops = step_flops(fns["sequential"])
        ratio = t["packed"] / t["sequential"]
        out[f"{dev.type}_pack_ratio_{n}"] = ratio
        out[f"{dev.type}_pack_ratio_vs_mode_batch_{n}"] = t["packed"] / t["sequential_mode_batch"]
        out[f"{dev.type}_pack_tflops_{n}"] = flops / t["packed"] / 1e12
        mark = ""
        if n == 4 and not cuda:
            mark = "  (target <= 0.9: " + ("met)" if ratio <= 0.9 else "NOT met)")
        print(f"  N={n:<2} one after another {t['sequential'] * 1000:9.1f} ms | mode-batched one after another "
              f"{t['sequential_mode_batch'] * 1000:9.1f} ms | packed {t['packed'] * 1000:9.1f} ms "
              f"({flops / t['packed'] / 1e12:.3f} TFLOP/s)  pack_ratio = {ratio:.3f}{mark}")
        if "packed_compiled" in t:
            c = t["packed_compiled"]
            out[f"{dev.type}_pack_compiled_ratio_{n}"] = c / t["sequential"]
            out[f"{dev.type}_pack_compiled_ms_{n}"] = c * 1000
            print(f"       packed + compiled {c * 1000:9.1f} ms ({flops / c / 1e12:.3f} TFLOP/s)  "
                  f"pack_compiled_ratio = {c / t['sequential']:.3f}; 50k-image epoch of all {n} runs ≈ "
                  f"{c * -(-50_000 // pack_batch):.1f} s")
        if profile and cuda:
            for k in ("packed", "packed_compiled"):
                busy = gpu_busy_ms(fns[k], 3) if k in fns else None
                if busy is not None:
                    out[f"cuda_busy_share_{k}_{n}"] = busy / 1000 / t[k]
                    print(f"    GPU kernels busy [{k}] = {busy / 1000 / t[k]:.0%} of the step "
                          f"({busy:.2f} ms of kernels)")
        del runs, fns
        if cuda:
            torch.cuda.empty_cache()
    return out
