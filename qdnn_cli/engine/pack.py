"""Several runs of one architecture trained as one computation (``--launcher packed``).

Each run keeps everything of its own — config, run directory, data order and
augmentation, mode sampling, optimizer, schedule, checkpoints, metrics — exactly as
:class:`~.loop.Trainer` builds them (each member *is* a Trainer). Only the forward and
backward are shared: every step, each run's batch and bit modes go into one pack batch
(:mod:`qdnn_cli.quant.slots`: runs × modes side by side in channels, one grouped
convolution per layer), each run's loss is computed from its own slots, and one
backward of their sum gives every run exactly its own gradient (no parameter is shared).
Then each run takes its own optimizer step. A run trained in a pack therefore equals the
same run trained alone with ``trainer.mode_batch=true`` up to floating-point summation
order, and its run directory can be resumed, reported, evaluated and searched alone.

Runs may start at different epochs (a pack killed between two runs' checkpoints) or
mid-epoch: a run joins the pack's steps where its own checkpoint left it, and leaves
when it reaches its last epoch.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ..quant.slots import PackError, check_packable, pack_batch, pack_inputs, split_slots
from .device import keep_freed_cpu_memory
from .interrupt import RunInterrupted, StopSignals, fault_hooks
from .loop import Trainer, TrainingDiverged
from .progress import make_progress
from .step import losses_from_logits
from ..words import count


# settings every run of a pack must share (the architecture itself is checked on the models)
PACK_KEYS = ("model.name", "trainer.batch_size", "trainer.device", "trainer.amp", "trainer.channels_last", "trainer.compile",
             "quant.weight", "quant.act", "quant.quantize_first_last", "quant.quantize_shortcut")


def pack_key(cfg) -> tuple:
    """Runs with equal keys can share a pack (what the launcher groups by)."""
    from omegaconf import OmegaConf

    def get(key):
        return OmegaConf.select(cfg, key)
    kwargs = cfg.model.get("kwargs")
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if k not in ("root", "download", "workers", "subset_seed")}
    return tuple(str(get(k)) for k in PACK_KEYS) + (repr(sorted(kwargs.items())), repr(sorted(data.items())))


def check_pack_config(cfg, name: str) -> None:
    t = cfg.trainer
    if t.get("compile") and (t.mode_sampling != "all" or cfg.loss.warmup_epochs or t.get("fp_warmup_epochs")):
        raise PackError(f"{name}: a compiled pack (trainer.compile={t.compile}) needs trainer.mode_sampling=all, "
                        "no loss.warmup_epochs and no trainer.fp_warmup_epochs (its graph is built once); "
                        "drop trainer.compile or those options")
    if t.amp == "fp16":
        raise PackError(f"{name}: --launcher packed does not take trainer.amp=fp16 (one loss scale per run); use bf16")


class PackedTrainer:
    """Trains ``members`` (Trainers of runs that fit one pack) step by step together."""

    def __init__(self, members: list[Trainer], names: list[str], console=None):
        self.members, self.names, self.console = members, names, console
        self.stop = StopSignals()
        self.diverged: list[tuple[str, str]] = []  # (run, why): stopped, the others went on

    def log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def prepare(self) -> None:
        for t, name in zip(self.members, self.names):
            if t.dist.enabled:
                raise PackError(f"{name}: --launcher packed runs in one process (no torchrun)")
            t.prepare()
            t.stop = self.stop  # one signal handler for the pack
            t.mode_batch = t.distill  # evaluation too runs every mode in one forward (same numbers)
            if t.cfg.trainer.mode_sampling == "all" and not t.fp_warmup_epochs:
                # every parameter has a gradient every step: the fused update (a kernel or two
                # per run instead of a loop or foreach chain over its tensors); torch's fused
                # SGD cannot take a momentum buffer that appears later (sandwich sampling, or
                # the other modes' BN joining after an FP warm-up)
                for group in t.optimizer.param_groups:
                    if "fused" in group:
                        group["fused"], group["foreach"] = True, False
        check_packable([t.model for t in self.members], self.names)
        if self.members[0].device.type == "cpu":
            keep_freed_cpu_memory()  # a pack's activations are large: no page faults per step
        self.losses, self.cudagraphs = pack_losses, False
        compile_option = self.members[0].cfg.trainer.get("compile")
        if compile_option:  # the whole pack's forward and losses as one graph (per set of runs stepping)
            from .compile import compile_mode, compile_step

            mode = compile_mode(compile_option)
            self.losses = compile_step(pack_losses, len(self.members) + 1, mode)
            self.cudagraphs = self.members[0].device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
            self.log(f"torch.compile (mode {mode}) of the pack's step: the first steps compile and take minutes")
        first = self.members[0]
        for t, name in zip(self.members[1:], self.names[1:]):
            if t.steps_per_epoch != first.steps_per_epoch or t.data.image_size != first.data.image_size:
                raise PackError(f"{name} has {t.steps_per_epoch} steps of {t.data.image_size}px images per epoch, "
                                f"{self.names[0]} {first.steps_per_epoch} of {first.data.image_size}px: "
                                "a pack steps its runs together")
            if t.device != first.device:
                raise PackError(f"{name} trains on {t.device}, {self.names[0]} on {first.device}")

    def fit(self) -> list[dict]:
        with self.stop:
            self.prepare()
            if self.stop.requested:
                for t in self.members:
                    t.files.status("stopped", t.start_epoch, f"stopped on signal {self.stop.requested} before training")
                raise RunInterrupted(f"stopped on signal {self.stop.requested} before the pack's first step; "
                                     "run the same command again to start")
            return self._train()

    def _train(self) -> list[dict]:
        first = self.members[0]
        epochs = range(min(t.start_epoch for t in self.members), max(t.end for t in self.members))
        show = bool(first.cfg.trainer.get("progress", True))
        with make_progress(self.console, show) as progress:
            for epoch in epochs:
                active = [t for t in self.members if t.start_epoch <= epoch < t.end]
                if active:
                    self.train_epoch(epoch, active, progress)
        stopped = {name for name, _ in self.diverged}
        return [t.finish() if name not in stopped else None for t, name in zip(self.members, self.names)]

    def train_epoch(self, epoch: int, active: list[Trainer], progress) -> None:
        states = {id(t): t.open_epoch(epoch) for t in active}
        batches = {id(t): iter(t.data.train) for t in active}
        steps = active[0].steps_per_epoch
        start = min(s.first for s in states.values())
        task = progress.add_task(f"pack of {len(active)}, epoch {epoch + 1}", total=steps, info="", completed=start)
        log_every = max(1, int(active[0].cfg.trainer.get("log_every", 20)))
        checkpoint_s = min((t.checkpoint_seconds for t in active if t.checkpoint_seconds), default=0)
        started = last_save = time.perf_counter()
        data_time, t_data = 0.0, started
        for step in range(start, steps):
            stepping = [t for t in active if step >= states[id(t)].first]
            xs, ys, modes = [], [], []
            for t in stepping:
                x, y = next(batches[id(t)])
                xs.append(x)
                ys.append(y)
                modes.append(t.step_modes(states[id(t)]))
            data_time += time.perf_counter() - t_data
            self.train_step(stepping, xs, ys, modes, states)
            for t in stepping:
                fault_hooks(epoch + 1, step + 1, t.files.dir, self.stop)
            due = checkpoint_s and time.perf_counter() - last_save >= checkpoint_s
            if (due or self.stop.requested) and step + 1 < steps:
                for t in active:  # every run saves where the pack is, so they resume together
                    s = states[id(t)]
                    if step + 1 > s.first:
                        t.save_position(epoch, step + 1, s.stats, s.mode_rng, s.images)
                last_save = time.perf_counter()
                if self.stop.requested:
                    raise RunInterrupted(f"stopped on signal {self.stop.requested} at epoch {epoch + 1}, step "
                                         f"{step + 1} (a pack of {count(len(active), 'run')}); run the same command again "
                                         "to resume there")
            if (step + 1) % log_every == 0 or step + 1 == steps:
                active = self._drop_diverged(active, states, epoch, step)
                if not active:
                    break
                rate = sum(states[id(t)].images for t in active) / (time.perf_counter() - started)
                progress.update(task, completed=step + 1, info=f"{count(len(active), 'run')} | {rate:.0f} img/s in all")
            t_data = time.perf_counter()
        train_s = time.perf_counter() - started
        progress.remove_task(task)
        for t in self._drop_diverged(active, states, epoch, steps):
            s = states[id(t)]
            t.close_epoch(epoch, s.stats, s.timer, train_s, data_time / max(train_s, 1e-9), s.images)

    def train_step(self, stepping: list[Trainer], xs, ys, modes, states) -> None:
        """One forward over every run's modes, each run's own loss, one backward, each
        run's own optimizer step."""
        if self.cudagraphs:  # a new step: the last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        for t in stepping:
            t.optimizer.zero_grad(set_to_none=True)
        total, per_run = self.losses([t.model for t in stepping], xs, ys, tuple(tuple(m) for m in modes),
                                     tuple(t.epoch_loss for t in stepping), tuple(t.distill for t in stepping),
                                     stepping[0].amp_ctx)
        total.backward()
        for t, y, per_mode in zip(stepping, ys, per_run):
            t.apply_step(per_mode, states[id(t)].stats, y.numel())
            states[id(t)].images += y.numel()

    def _drop_diverged(self, active, states, epoch, step) -> list[Trainer]:
        """A run whose loss became non-finite stops (its status says why); the others go on."""
        kept = []
        for t, name in zip(active, [self.names[self.members.index(t)] for t in active]):
            try:
                t._check_finite(states[id(t)].stats, epoch, step)
                kept.append(t)
            except TrainingDiverged as e:
                t.end = epoch  # nothing more for this run
                self.diverged.append((name, str(e)))
                self.log(f"{name}: {e}")
        return kept


def pack_losses(models, xs, ys, modes, loss_fns, distills, amp_ctx=contextlib.nullcontext):
    """Forward of every model's modes as one pack and each model's loss from its own
    slots: ``(summed loss, [per-mode (CE, top-1 hits, top-5 hits) of each model])``. The
    backward of the sum gives each model only its own gradient (no parameter is shared).
    What a compiled pack compiles whole."""
    counts = [len(m) for m in modes]
    with amp_ctx(), pack_batch(models, modes) as driver:
        logits = split_slots(driver(pack_inputs(xs)), sum(counts))
    total, per_run, at = None, [], 0
    for y, m, n, loss_fn, distill in zip(ys, modes, counts, loss_fns, distills):
        loss, per_mode = losses_from_logits(logits[at:at + n], y, list(m), loss_fn, distill)
        at += n
        total = loss if total is None else total + loss
        per_run.append(per_mode)
    return total, per_run


def pack_backward(models, xs, ys, modes, loss_fns, distills, amp_ctx=contextlib.nullcontext, losses=None) -> list:
    """:func:`pack_losses` (or its compiled form ``losses``) and the backward of the sum."""
    total, per_run = (losses or pack_losses)(models, xs, ys, modes, loss_fns, distills, amp_ctx)
    total.backward()
    return per_run


class PrefixedConsole:
    """A member run's lines in a pack's output, each behind the run's name."""

    def __init__(self, console, name: str):
        self.console, self.name = console, name

    def print(self, msg, *args, **kwargs) -> None:
        self.console.print(f"{self.name}: {msg}", *args, **kwargs)


def run_pack(cfgs: list, run_dirs: list[Path], overrides: list[list[str]], names: list[str], console=None,
             fresh: list[bool] | None = None) -> tuple[list[dict | None], list[tuple[str, str]]]:
    """Train runs ``cfgs`` into ``run_dirs`` as one pack: each run directory locked,
    checked and written as :func:`~qdnn_cli.engine.run_training` does for one run.
    Returns each run's final results (None for a run that diverged) and the diverged
    runs as (name, why): one run's divergence does not stop the others."""
    from .rundir import save_config
    from . import _record_failure, check_same_run
    from .checkpoint import RunLock

    fresh = fresh or [False] * len(cfgs)
    for cfg, name in zip(cfgs, names):
        check_pack_config(cfg, name)
    members = [Trainer(cfg, d, console=PrefixedConsole(console, name) if console is not None else None)
               for cfg, d, name in zip(cfgs, run_dirs, names)]
    locks = []
    try:
        for cfg, d, ov in zip(cfgs, run_dirs, overrides):
            locks.append(RunLock(d).acquire())
            check_same_run(cfg, d)
            save_config(cfg, Path(d), list(ov))
        pack = PackedTrainer(members, names, console)
        try:
            results = pack.fit()
        except RunInterrupted:
            raise
        except Exception as e:
            for t, d, new in zip(members, run_dirs, fresh):
                if hasattr(t, "files"):
                    _record_failure(t, Path(d), e, fresh=new)
            raise
        return results, pack.diverged
    finally:
        for lock in locks:
            lock.release()
