"""Which device a run uses, and how much memory it has taken."""
from __future__ import annotations

import resource

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device={name!r} is unknown: choose auto, cpu or cuda")
    return torch.device(name)


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
