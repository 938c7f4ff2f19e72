"""Which device a run uses, and how much memory it has taken."""
from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
# The CPU instructions that multiply bf16 natively; without them bf16 runs through
# conversions, many times slower than float32.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX-512 BF16"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device={name!r} is unknown: choose auto, cpu or cuda")
    return torch.device(name)


def native_cpu_bf16(cpuinfo: str | None = None) -> str | None:
    """This CPU's native bf16 instructions (e.g. ``"AMX-BF16, AVX-512 BF16"``), or None
    where it has none (or ``/proc/cpuinfo`` cannot be read: not Linux).

    ``QDNN_CPU_BF16=0`` / ``=1`` overrides what was read (a container whose cpuinfo hides
    flags, or float32 on purpose; the test suite sets 0 so that its float comparisons do
    not depend on the CPU it runs on)."""
    forced = os.environ.get("QDNN_CPU_BF16", "").strip()
    if cpuinfo is None and forced in ("0", "1"):
        return "QDNN_CPU_BF16=1" if forced == "1" else None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    found = [name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags]
    return ", ".join(found) if found else None


def resolve_amp(name: str, device: torch.device, cpuinfo: str | None = None) -> tuple[str, str]:
    """``trainer.amp`` as a run will use it, and why: ``auto`` is bf16 autocast on a CPU
    with native bf16 (where the joint step measured 1.6x faster at equal accuracy: the
    README's benchmark section, experiments/cifar100 "bf16 on the CPU") and float32 everywhere else, CUDA included,
    where the recipes name ``trainer.amp=bf16`` themselves."""
    if name != "auto":
        return name, f"trainer.amp={name}"
    if device.type == "cpu":
        native = native_cpu_bf16(cpuinfo)
        if native:
            return "bf16", f"trainer.amp=auto: this CPU multiplies bf16 natively ({native})"
        return "none", "trainer.amp=auto: this CPU has no native bf16 (emulated bf16 is slower than float32)"
    return "none", f"trainer.amp=auto: float32 on {device.type} (set trainer.amp=bf16 for autocast)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def keep_freed_cpu_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the system.

    A mode-batched step (``trainer.mode_batch``) allocates activations of 40+ MB, above
    glibc's largest mmap threshold (32 MB), so each one is a fresh mapping whose pages
    fault in on first touch: on our 2-core CPU that made the step's element-wise kernels
    2.5x slower. With mmap off and trimming raised, freed blocks stay in the heap, as
    PyTorch's own caching allocator keeps them on a GPU. The process's resident memory
    then stays at its peak. Linux/glibc only; elsewhere nothing changes (returns False).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
