"""torch.compile for the training step: one graph per bit mode, or one for the whole step.

Dynamo counts recompiles per code object, i.e. over every instance of a model class in
the process, so graphs of models compiled earlier are dropped first and each compiled
model or step gets a budget of its own; going past it raises instead of silently
falling back to eager.
"""
from __future__ import annotations

import functools

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("mode", "step")


def compile_mode(value) -> str:
    """``trainer.compile``: true means torch.compile's default mode, or name a mode."""
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return value
    raise ValueError(f"trainer.compile={value!r} is not allowed: choose false, true or one of {', '.join(COMPILE_MODES)}")


# Variables that pin the CPU kernels below what this machine has, to emulate another one
# (`make test-kernels`, the README's checks on other machines' sums).
KERNEL_PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def separate_pinned_kernel_cache() -> None:
    """Give a process with pinned kernels an inductor cache folder of its own.

    torch's compiled-graph cache does not key on ``ATEN_CPU_CAPABILITY``: a graph compiled
    under ``ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1`` was loaded again by a later native
    run at one thread, which then died of a segmentation fault (torch 2.14.1, this repo's
    compiled-LSQ test; a fresh cache ran it). Only inductor's default folder is redirected:
    a folder the user chose is left alone."""
    import os
    import re

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    pins = [f"{name}-{os.environ[name]}" for name in KERNEL_PINS if os.environ.get(name)]
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not pins or (chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir())):
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir() + "_" + re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(pins))


def _compile_budget(graphs: int) -> None:
    """Drop earlier graphs, allow ``graphs`` per code object, fail loudly past it; keep
    pinned kernels' graphs apart from native ones."""
    import torch._dynamo as dynamo

    separate_pinned_kernel_cache()

    dynamo.reset()
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(8, graphs))
    if hasattr(dynamo.config, "fail_on_recompile_limit_hit"):
        dynamo.config.fail_on_recompile_limit_hit = True


def compile_step(step, n_mode_sets: int, mode: str = "default"):
    """torch.compile of a whole-step function (:func:`whole_step`), one graph per mode
    list (sandwich sampling draws several) and train/eval state."""
    import torch

    _compile_budget(2 * n_mode_sets + 2)
    # dynamic=False: the mode list must stay constants (a layer's BN key is str(bits)),
    # never become symbolic after the second list is seen
    return torch.compile(step, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)


def compile_model(model, n_modes: int, mode: str = "default"):
    """torch.compile with room for one graph per bit mode × train/eval. ``reduce-overhead``
    adds CUDA graphs, which matter here: a CIFAR ResNet-20 step is launch-bound on a
    large GPU."""
    import torch

    _compile_budget(2 * n_modes + 2)
    return torch.compile(model, mode=None if mode == "default" else mode)


def whole_step(model, loss_fn, distill: bool, amp_ctx=None, batched: bool = False):
    """``(x, y, modes) -> (summed loss, per-mode stats)``: :func:`~.step.mode_losses` with
    no per-mode backward, the function that ``compile_scope=step`` compiles whole.

    One forward graph and one backward graph per step instead of one pair per mode: far
    fewer launches where the per-mode step is launch-bound, at the price of all modes'
    activations alive at once.
    """
    import contextlib

    from .step import mode_losses

    return functools.partial(mode_losses, model, loss_fn=loss_fn, distill=distill,
                             amp_ctx=amp_ctx or contextlib.nullcontext, batched=batched)
