"""The trainer: one loop for quantizable, dedicated and full-precision runs.

``Trainer.fit`` reads top to bottom: build (device, data, model, optimizer, schedule) →
maybe resume → for each epoch: train every sampled bit mode on each batch with one
optimizer step → evaluate every mode → write metrics, checkpoint, best → results.
The step is :func:`.step.mode_losses`; files are :class:`.rundir.RunFiles`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import TensorBatches, build_data
from ..errors import InputError
from ..models import build_model, load_torchvision_weights
from ..quant import QuantSpec, load_quantizable_state_dict, quantizable_state_dict, sort_modes
from ..quant.calibrate import calibrate_quantizers, mark_calibrated, needs_calibration
from ..quant.mixed import quantized_layers
from .checkpoint import CheckpointError, atomic_save, safe_load
from .compile import compile_mode, compile_model, compile_step, whole_step
from .device import keep_freed_cpu_memory, peak_memory_mb, resolve_amp, resolve_device
from .distributed import DistContext
from .evaluation import evaluate
from .interrupt import KILL_AT_ENV, RunInterrupted, StopSignals, epoch_position, fault_hooks, restore_position  # noqa: F401
from .loggers import build_loggers
from .losses import QuantizableLoss
from .optim import build_optimizer, build_scheduler
from .progress import epoch_line, make_progress
from .rundir import RunFiles, last_eval, train_rows, val_rows
from .step import EpochStats, ModeTimer, mode_losses, mode_sets, random_config, sample_modes



class TrainingDiverged(InputError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class EpochState:
    """Where one run is within an epoch: its mode sampler, running sums, first step
    (a mid-epoch checkpoint's) and images trained so far."""
    epoch: int
    mode_rng: random.Random
    stats: EpochStats
    timer: ModeTimer
    first: int = 0
    images: int = 0


class Trainer:
    """Owns one run directory. ``fit()`` trains to ``trainer.epochs`` (resuming if possible)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, console=None, resume: bool = True):
        self.cfg, self.console, self.resume = cfg, console, resume
        t = cfg.trainer
        self.dist = DistContext.from_env(t.device)
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        if t.get("num_threads"):
            torch.set_num_threads(int(t.num_threads))
        self.epochs = int(t.epochs)
        self.files = RunFiles(run_dir, self.epochs, enabled=self.dist.is_main)
        self.distill = t.kind == "quantizable"
        self.fp_warmup_epochs = int(t.get("fp_warmup_epochs") or 0) if self.distill else 0
        self.loss_fn = self.epoch_loss = QuantizableLoss.from_config(cfg.loss)
        if not self.distill:  # a dedicated model's one mode is plain CE, whatever the joint loss weighs
            self.loss_fn = self.epoch_loss = dataclasses.replace(self.loss_fn, top_weight=1.0)
        # config.yaml records the precision that ran, not "auto": a resume on a CPU that
        # resolves auto otherwise is then refused as a different run
        self.amp_chosen_here = t.amp == "auto"
        self.amp, self.amp_reason = resolve_amp(t.amp, self.device)
        t.amp = self.amp
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("trainer.amp=fp16 needs CUDA; use bf16 or none on CPU")
        self.channels_last = bool(t.channels_last)
        self.mode_batch = bool(t.get("mode_batch", False)) and self.distill  # one forward for all modes
        if self.mode_batch and self.device.type == "cpu":
            keep_freed_cpu_memory()  # large slot-batched activations: no page faults per step
        if self.device.type == "cuda":
            # fixed input shapes: let cuDNN pick the fastest convolution per layer once
            torch.backends.cudnn.benchmark = True
        self.init_path = None  # model.init_from's checkpoint, for a run that starts (not resumes)
        if cfg.model.get("init_from") and not (resume and self.files.checkpoint.exists()):
            from .init_from import check_source, file_sha256
            from .passes import source_passes

            self.init_path = check_source(cfg)
            cfg.model.init_sha256 = file_sha256(self.init_path)  # config.yaml records what it started from,
            # and its passes, so the budget axis survives the source's folder being moved or deleted
            cfg.model.init_passes = source_passes(str(self.init_path))
        self.start_epoch, self.best, self.history = 0, -1.0, []
        self.position = None  # where a mid-epoch checkpoint left the epoch start_epoch + 1
        self.stop = StopSignals()

    def amp_ctx(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def log(self, msg: str) -> None:
        if self.dist.is_main and self.console is not None:
            self.console.print(msg)

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.trainer
        torch.manual_seed(int(cfg.seed))
        random.seed(int(cfg.seed))
        global_batch = int(t.batch_size)
        if global_batch % self.dist.world:
            raise ValueError(f"trainer.batch_size={global_batch} is not divisible by {self.dist.world} processes")
        self.data = build_data(cfg.data, global_batch // self.dist.world, int(t.eval_batch_size), self.device,
                               int(cfg.seed), self.channels_last, self.dist.rank, self.dist.world,
                               int(cfg.data.get("workers", 4)))
        self.model = self._build_model()
        self.lr = float(cfg.optim.lr) * (global_batch / 256 if cfg.optim.get("scale_lr_by_batch") else 1)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr)
        self.steps_per_epoch = len(self.data.train)
        if t.get("max_steps_per_epoch"):
            self.steps_per_epoch = min(self.steps_per_epoch, int(t.max_steps_per_epoch))
        self.per_step_schedule = cfg.sched.get("interval", "epoch") == "step"
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, self.epochs, self.steps_per_epoch)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        every = t.get("checkpoint_every_minutes")
        streamed = not isinstance(self.data.train, TensorBatches)  # large-image folders stream from disk
        self.checkpoint_seconds = 60 * float(every if every is not None else (30 if streamed else 0))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.modes_desc = sort_modes(self.spec.modes, descending=True)
        self.layer_names = list(quantized_layers(self.model))
        self._compile()
        d = self.data
        self.files.data_info({"num_classes": d.num_classes, "in_channels": d.in_channels, "image_size": d.image_size,
                              "num_train": d.num_train, "num_val": d.num_val})

    def _build_model(self) -> torch.nn.Module:
        cfg, d = self.cfg, self.data
        self.spec = QuantSpec.from_config(cfg.quant)
        model = build_model(cfg.model.name, self.spec, d.num_classes, d.in_channels, **dict(cfg.model.get("kwargs") or {}))
        min_size = int(cfg.model.get("min_image_size", 1))
        if d.image_size < min_size:
            raise ValueError(f"model {cfg.model.name} needs images of at least {min_size}px, data has {d.image_size}px")
        if cfg.model.get("torchvision_weights"):
            state = safe_load(cfg.model.torchvision_weights)
            load_torchvision_weights(model, state.get("state_dict", state))
        if self.init_path is not None:
            from .init_from import init_model_from

            source = init_model_from(model, self.init_path, d.num_classes, d.in_channels)
            self.log(f"initialised from {self.init_path} (epoch {source['epoch']}; every mode's BN from its "
                     f"{'FP' if source['modes'] == 32 else source['modes']} mode's)")
        model.to(self.device)
        if self.amp_chosen_here:
            self.log(f"precision: {'bf16 autocast' if self.amp == 'bf16' else 'float32'} ({self.amp_reason})")
        if self.dist.enabled and self.cfg.trainer.get("sync_bn") and self.device.type == "cuda":
            # batch statistics over the global batch (NCCL); on CPU/gloo BN stays per process
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.dist.broadcast_model(model)
        return model

    def _compile(self) -> None:
        """``forward``: the model, or its per-mode compiled graphs; ``compiled_step``: the
        whole step as one graph (``compile_scope=step``), else None."""
        t = self.cfg.trainer
        self.forward, self.compiled_step, self.cudagraphs = self.model, None, False
        if not t.get("compile"):
            return
        mode = compile_mode(t.compile)
        self.cudagraphs = self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
        if t.get("compile_scope", "mode") == "step":
            n_sets = mode_sets(self.modes_desc, t.mode_sampling, int(t.sandwich_k))
            self.compiled_step = compile_step(whole_step(self.model, self.loss_fn, self.distill, self.amp_ctx,
                                                         self.mode_batch), n_sets, mode)
        else:
            self.forward = compile_model(self.model, len(self.modes_desc), mode)
        self.log(f"torch.compile (mode {mode}, scope {t.get('compile_scope', 'mode')}): the first steps compile "
                 "one graph per bit mode (or mode list) and take minutes; later steps run compiled")

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict:
        return {"format": "qdnn-checkpoint-1", "model": quantizable_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "best": self.best,
                "model_name": self.cfg.model.name, "num_classes": self.data.num_classes,
                "in_channels": self.data.in_channels, "image_size": self.data.image_size,
                "config": OmegaConf.to_container(self.cfg, resolve=True), "torch_rng": torch.get_rng_state()}

    def try_resume(self) -> None:
        path = self.files.checkpoint
        if not (self.resume and path.exists()):
            return
        ck = safe_load(path)
        if ck.get("model_name") != self.cfg.model.name:
            raise CheckpointError(f"{path} is a {ck.get('model_name')} run, this config builds "
                                  f"{self.cfg.model.name}; use another out_dir")
        load_quantizable_state_dict(self.model, ck["model"], str(path))
        # how the update runs (fused, foreach) is this process's choice, not state: a pack's
        # fused update must not follow its checkpoint into a run resumed alone
        kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ck["optimizer"])
        for group, chosen in zip(self.optimizer.param_groups, kernels):
            group.update(chosen)
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
        self.start_epoch, self.best = int(ck["epoch"]), float(ck["best"])
        self.position = ck.get("position")
        self.history = self.files.trim_metrics(self.start_epoch)
        if self.start_epoch >= self.epochs:
            self.log(f"finished already: {path} holds all {self.epochs} epochs; nothing to train")
            return
        where = f", step {self.position['step']} of epoch {self.start_epoch + 1}" if self.position else ""
        self.log(f"resumed from {path} after epoch {self.start_epoch}{where}")

    def calibrate(self) -> None:
        """LSQ steps still unset are set from the first training batch before the first
        step, on rank 0, then broadcast: every rank starts alike, and no forward needs a
        host sync (so a whole-step graph compiles)."""
        if needs_calibration(self.model):
            self.data.train.set_epoch(self.start_epoch)
            x, _ = next(iter(self.data.train))
            calibrate_quantizers(self.model, x, self.modes_desc)
            self.dist.broadcast_model(self.model)
        mark_calibrated(self.model)

    # -- the loop ------------------------------------------------------------------------
    def prepare(self, on_ready=None) -> None:
        """Everything before the first epoch: build, resume, calibrate, loggers."""
        self.setup()
        self.try_resume()
        self.calibrate()
        self.loggers = build_loggers(self.cfg.get("logger", "csv"), self.files.dir, self.start_epoch) \
            if self.dist.is_main else []
        if on_ready is not None and self.dist.is_main:
            on_ready()
        t = self.cfg.trainer
        self.end = self.epochs if not t.get("stop_after") else min(self.epochs, self.start_epoch + int(t.stop_after))
        self.final = None
        self.files.status("running", self.start_epoch)

    def fit(self, on_ready=None) -> dict:
        """Train to ``trainer.epochs``; the caller holds the run directory's lock."""
        with self.stop:  # a signal while building stops before the first step (status.json, exit 75)
            self.prepare(on_ready)
            if self.stop.requested:
                self.files.status("stopped", self.start_epoch, f"stopped on signal {self.stop.requested} before training")
                raise RunInterrupted(f"stopped on signal {self.stop.requested} before the first step of epoch "
                                     f"{self.start_epoch + 1}; run the same command again to start")
            return self._train()

    def _train(self) -> dict:
        t = self.cfg.trainer
        with make_progress(self.console, bool(t.get("progress", True)) and self.dist.is_main) as progress:
            for epoch in range(self.start_epoch, self.end):
                self.close_epoch(epoch, *self.train_epoch(epoch, progress))
        return self.finish()

    def close_epoch(self, epoch: int, stats, timer, train_s, data_share, images) -> None:
        """After an epoch's steps: schedule, evaluate, record, log."""
        lr = self.last_lr  # the last step's (per-epoch schedules: the epoch's)
        if not self.per_step_schedule:
            self.scheduler.step()
        self.dist.broadcast_buffers(self.model)  # every rank evaluates rank 0's BN statistics
        ev, eval_s = None, 0.0
        if (epoch + 1) % max(1, int(self.cfg.trainer.get("eval_every", 1))) == 0 or epoch + 1 == self.epochs:
            started = time.perf_counter()
            ev = self.final = evaluate(self.model, self.data.val, self.modes_desc, self.amp_ctx, self.dist,
                                       self.mode_batch)
            eval_s = time.perf_counter() - started
        rows = self.metric_rows(epoch + 1, stats, timer, ev, lr, train_s, eval_s, data_share, images)
        self.end_epoch(epoch + 1, rows, ev)
        self.log(epoch_line(epoch + 1, self.epochs, ev, stats, train_s))

    def finish(self) -> dict:
        for logger in self.loggers:
            logger.close()
        final = self.final or last_eval(self.history)  # nothing left to train: the stored last epoch
        if self.end < self.epochs:  # time-boxed invocation: leave a resumable run
            self.files.status("stopped", self.end, "trainer.stop_after reached; run again to continue")
            self.log(f"stopped after epoch {self.end} of {self.epochs} (trainer.stop_after); run again to resume")
            return final
        self.files.results(final, self.history, self.modes_desc)
        self.files.status("finished", self.epochs)
        self.dist.barrier()
        return final

    def open_epoch(self, epoch: int) -> "EpochState":
        """Start epoch ``epoch`` (0-based): data order, loss, mode sampling, and where a
        mid-epoch checkpoint left it."""
        self.data.train.set_epoch(epoch)
        self.epoch_loss = self.loss_fn.at_epoch(epoch)
        if self.fp_warmup(epoch):  # the FP mode alone, stepped as a plain FP model would be
            self.epoch_loss = dataclasses.replace(self.epoch_loss, top_weight=1.0)
        state = EpochState(epoch, random.Random(int(self.cfg.seed) * 7919 + epoch), EpochStats(),
                           ModeTimer(self.device))
        self.model.train()
        if self.position is not None:  # a mid-epoch checkpoint: continue at its batch
            state.first = int(self.position["step"])
            state.images = restore_position(self.position, state.stats, state.mode_rng, self.device)
            self.data.train.skip(state.first)
            self.position = None
        return state

    def fp_warmup(self, epoch: int) -> bool:
        """Epoch ``epoch`` (0-based) trains the full-precision mode alone: at the start each
        quantized mode's gradient on the shared weights is ~20x the FP mode's, so a joint
        step would be theirs alone (``trainer.fp_warmup_epochs``)."""
        return epoch < self.fp_warmup_epochs

    def step_modes(self, state: "EpochState") -> list:
        """The bit modes (and, with mode_sampling=mixed, per-layer configurations) of one step."""
        t = self.cfg.trainer
        if self.fp_warmup(state.epoch):
            return self.modes_desc[:1]
        modes = sample_modes(self.modes_desc, t.mode_sampling, int(t.sandwich_k), state.mode_rng)
        if t.mode_sampling == "mixed":  # k per-layer configurations, distilled from the top mode
            modes += [random_config(self.layer_names, self.modes_desc, state.mode_rng) for _ in range(int(t.mixed_k))]
        return modes

    def train_epoch(self, epoch: int, progress):
        """One pass over the training data; returns (stats, timer, seconds, data-time share, images)."""
        t = self.cfg.trainer
        state = self.open_epoch(epoch)
        stats, timer, first = state.stats, state.timer, state.first
        steps = self.steps_per_epoch
        log_every = max(1, int(t.get("log_every", 20)))
        task = progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, info="", completed=first)
        started = t_data = last_save = time.perf_counter()
        data_time = 0.0
        for step, (x, y) in enumerate(self.data.train, start=first):
            if step >= steps:
                break
            data_time += time.perf_counter() - t_data
            self.train_step(x, y, self.step_modes(state), stats, timer)
            state.images += y.numel()
            fault_hooks(epoch + 1, step + 1, self.files.dir, self.stop)
            due = self.checkpoint_seconds and time.perf_counter() - last_save >= self.checkpoint_seconds
            if (due or self.stop.requested) and step + 1 < steps:
                self.save_position(epoch, step + 1, stats, state.mode_rng, state.images)
                last_save = time.perf_counter()
                if self.stop.requested:
                    raise RunInterrupted(f"stopped on signal {self.stop.requested} at epoch {epoch + 1}, step "
                                         f"{step + 1}; run the same command again to resume there")
            if (step + 1) % log_every == 0 or step + 1 == steps:
                self._check_finite(stats, epoch, step)
                rate = state.images * self.dist.world / (time.perf_counter() - started)
                info = " ".join(f"{m}b:{stats.mean_loss(m):.3f}" for m in stats.loss)
                progress.update(task, completed=step + 1, info=f"loss {info} | {rate:.0f} img/s")
            t_data = time.perf_counter()
        train_s = time.perf_counter() - started
        self._check_finite(stats, epoch, steps)
        progress.remove_task(task)
        return stats, timer, train_s, data_time / max(train_s, 1e-9), state.images

    def save_position(self, epoch: int, step: int, stats: EpochStats, mode_rng, images: int) -> None:
        """A mid-epoch checkpoint: the state after ``epoch`` epochs plus ``step`` steps."""
        if not self.dist.is_main:
            return
        state = self.checkpoint_state(epoch)
        state["position"] = epoch_position(step, stats, mode_rng, images)
        atomic_save(state, self.files.checkpoint)
        stopping = "stopped on a signal" if self.stop.requested else "mid-epoch checkpoint"
        self.files.status("stopped" if self.stop.requested else "running", epoch, f"{stopping} at step {step}")

    def train_step(self, x, y, modes: list[int], stats: EpochStats, timer: ModeTimer) -> None:
        if self.cudagraphs:  # a new step: last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        if self.compiled_step is not None:  # one graph for all modes: per-mode time is not separable
            loss, per_mode = self.compiled_step(x, y, tuple(modes))
            self.scaler.scale(loss).backward()  # unchanged loss unless fp16
        else:
            _, per_mode = mode_losses(self.model, x, y, modes, self.epoch_loss, self.distill, self.forward,
                                      self.amp_ctx, lambda loss: self.scaler.scale(loss).backward(), timer,
                                      batched=self.mode_batch)
        self.apply_step(per_mode, stats, y.numel())

    def apply_step(self, per_mode: dict, stats: EpochStats, n: int) -> None:
        """After the backward: count the step, update the weights (and a per-step schedule)."""
        for m, (ce, top1, top5) in per_mode.items():
            stats.add(m if isinstance(m, (int, str)) else "mixed", ce, top1, top5, n)
        self.dist.average_gradients(self.model.parameters())
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.per_step_schedule:
            self.scheduler.step()

    def metric_rows(self, epoch, stats, timer, ev, lr, train_s, eval_s, data_share, images) -> list[dict]:
        peak = peak_memory_mb(self.device)
        seen = {m: (self.dist.sum_tensor(torch.tensor([float(n)], device=self.device)).item()
                    if self.dist.enabled else n) for m, n in stats.seen.items()}
        rows = train_rows(epoch, stats, timer.totals(), seen, lr, train_s, data_share,
                          images * self.dist.world / max(train_s, 1e-9), peak, self.modes_desc)
        if ev is not None:
            rows += val_rows(epoch, ev, lr, self.data.num_val, eval_s, peak, self.modes_desc)
        return rows

    def end_epoch(self, epoch: int, rows: list[dict], ev: dict | None) -> None:
        """Record the epoch: metrics, checkpoint (and best.pt when the mean top-1 improved)."""
        is_best = False
        if ev is not None:
            score = sum(r["top1"] for r in ev.values()) / len(ev)
            is_best, self.best = score > self.best, max(self.best, score)
        self.history += rows
        if not self.dist.is_main:
            return
        self.files.append_metrics(rows)
        for logger in self.loggers:
            logger.log_epoch(epoch, rows)
        state = self.checkpoint_state(epoch)
        atomic_save(state, self.files.checkpoint)
        if is_best:
            atomic_save(state, self.files.best)
        self.files.status("running", epoch)

    def _check_finite(self, stats: EpochStats, epoch: int, step: int) -> None:
        for m, v in stats.loss.items():
            if not torch.isfinite(v).item():
                kept = (f"the last good checkpoint (epoch {epoch}) is kept in {self.files.checkpoint}" if epoch
                        else "no checkpoint was written")
                self.files.status("failed", epoch, f"loss became non-finite in mode {m}")
                raise TrainingDiverged(f"loss became {v.item()} in bit mode {m} at epoch {epoch + 1}, step {step + 1}; "
                                       f"stopping ({kept}); try a lower optim.lr")
