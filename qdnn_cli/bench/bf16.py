"""``make bench``, CPU precision section: the joint step in float32 and in bf16 autocast,
against this CPU's own matmul rate in each precision (its roofline).

Side by side in one process, interleaved round-robin, medians:

* matmul_tflops_{float32,bf16}: a 2048x2048 ``torch.matmul``, the machine's rate
* step[{fp32,bf16}_{per_mode,mode_batch}]: the joint 5-mode step of ResNet-20, batch 128,
  channels_last, with its TFLOP/s and that rate's share of the matmul rate
* bf16_step_speedup = step(float32, per mode) / step(bf16, best form)   (target ≥ 1.6 where
  the CPU has native bf16; bf16 becomes worth a default from 1.4)

Native bf16 means AVX-512 BF16 or AMX instructions (``/proc/cpuinfo``); a CPU without them
runs bf16 through conversions, and the section says so rather than suggesting bf16. The
quantizers compute in float32 under autocast either way (``tests/test_quantizers.py``).
"""
from __future__ import annotations

import contextlib

import torch

from ..engine.device import native_cpu_bf16
from ..engine.losses import QuantizableLoss
from ..engine.step import mode_losses
from ..models import build_model
from ..quant import QuantSpec
from .batching import step_flops, timed

def matmul_tflops(n: int = 2048, repeats: int = 5) -> dict:
    """This CPU's float32 and bf16 ``torch.matmul`` rates (TFLOP/s), timed interleaved."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    t = timed({"float32": lambda: torch.matmul(a, b), "bf16": lambda: torch.matmul(a16, b16)}, repeats, lambda: None)
    return {k: 2 * n**3 / v / 1e12 for k, v in t.items()}


def _joint_step(seed: int, modes, batch: int, amp: bool, batched: bool):
    torch.manual_seed(seed)
    model = build_model("resnet20", QuantSpec(tuple(modes), weight_scale="mean_abs"), num_classes=100).train()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = QuantizableLoss()
    amp_ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        mode_losses(model, x, y, modes, loss_fn, True, amp_ctx=amp_ctx, backward=torch.Tensor.backward,
                    batched=batched)
        opt.step()
    return step


def run(modes=(32, 8, 4, 3, 2), batch: int = 128, repeats: int = 5, force: bool = False) -> dict:
    """The section's figures. Without native bf16 the bf16 step is not timed (emulated bf16
    runs 15-100x slower than float32: minutes per step) unless ``force``; the matmul rates
    are then measured at 512x512 so that the section still ends in seconds."""
    native = native_cpu_bf16()
    print(f"CPU precision: float32 against bf16 autocast (this CPU: "
          f"{'native bf16 (' + native + ')' if native else 'no native bf16 instructions: bf16 is emulated'}; "
          f"{torch.get_num_threads()} threads)")
    n = 2048 if native or force else 512
    rates = matmul_tflops(n, repeats)
    for name, rate in rates.items():
        print(f"  matmul {n}x{n} {name:<8} {rate:7.3f} TFLOP/s")
    out = {"cpu_native_bf16": bool(native), "matmul_tflops_float32": rates["float32"],
           "matmul_tflops_bf16": rates["bf16"], "matmul_bf16_vs_float32": rates["bf16"] / rates["float32"]}
    print(f"  bf16 matmul rate / float32 matmul rate = {out['matmul_bf16_vs_float32']:.3f}")
    precisions = (False, True) if native or force else (False,)
    fns = {f"{'bf16' if amp else 'fp32'}_{'mode_batch' if batched else 'per_mode'}": _joint_step(0, modes, batch, amp,
                                                                                                batched)
           for amp in precisions for batched in (False, True)}
    flops = step_flops(fns["fp32_per_mode"])
    t = timed(fns, repeats, lambda: None)
    for k, v in t.items():
        achieved = flops / v / 1e12
        precision = "bf16" if k.startswith("bf16") else "float32"
        print(f"  step[{k:<15}] {v * 1000:9.1f} ms   {achieved:7.3f} TFLOP/s = {achieved / rates[precision]:5.1%} of "
              f"the {precision} matmul rate")
        out[f"cpu_step_ms_{k}"] = v * 1000
        out[f"cpu_step_roofline_share_{k}"] = achieved / rates[precision]
    if "bf16_per_mode" not in t:
        print("bf16_step_speedup: not measured (no native bf16 on this CPU: trainer.amp=bf16 would be slower here; "
              "--bf16-anyway times it)")
        return out
    speedup = t["fp32_per_mode"] / min(t["bf16_per_mode"], t["bf16_mode_batch"])
    out["bf16_step_speedup"] = speedup
    verdict = ("met" if speedup >= 1.6 else "NOT met") if native else "not applicable: no native bf16 here"
    print(f"bf16_step_speedup = {speedup:.3f}  (float32 per-mode step / best bf16 step; target >= 1.6 on a CPU "
          f"with native bf16: {verdict})")
    return out
