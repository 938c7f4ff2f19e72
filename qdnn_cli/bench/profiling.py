"""GPU kernel time of a step, from the profiler: what tells launch- from compute-bound."""
from __future__ import annotations

import torch


def gpu_busy_ms(step, steps: int) -> float | None:
    """Sum of CUDA kernel times per step (torch.profiler), to tell launch- from compute-bound."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        total_us = 0.0
        for ev in prof.events():
            if getattr(ev, "device_type", None) == torch.autograd.DeviceType.CUDA:
                total_us += ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        return total_us / 1000 / steps if total_us else None
    except Exception as e:  # the profiler is a diagnostic: never fail the bench for it
        print(f"    profiler unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None
