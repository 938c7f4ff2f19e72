"""The training engine: one loop for quantizable, dedicated and full-precision runs.

Reads top to bottom: build (device, data, model, optimiser, schedule) → maybe resume →
for each epoch: train every sampled bit mode on each batch, one optimizer step →
evaluate every mode → write metrics, checkpoint, best → final per-mode table.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..config import COMPILE_MODES
from ..data import build_data
from ..models import build_model, load_torchvision_weights
from ..quant import QuantSpec, load_quantizable_state_dict, mode_label, quantizable_state_dict, set_bit_mode
from .checkpoint import CheckpointError, atomic_save, safe_load
from .distributed import DistContext
from .losses import QuantizableLoss

METRIC_FIELDS = ["epoch", "mode", "split", "loss", "top1", "top5", "lr", "images", "seconds", "images_per_s",
                 "epoch_seconds", "data_time_share", "peak_mem_mb"]
RESULT_FIELDS = ["mode", "top1", "top5", "loss", "best_top1", "epochs", "calibrated"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- building blocks
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device={name!r} is unknown: choose auto, cpu or cuda")
    return torch.device(name)


def quant_spec(cfg: DictConfig) -> QuantSpec:
    q = cfg.quant
    return QuantSpec(tuple(int(b) for b in q.bits), q.weight, q.act, bool(q.bit_specific_bn),
                     bool(q.quantize_first_last), bool(q.quantize_shortcut))


def build_optimizer(model: torch.nn.Module, o: DictConfig, lr: float) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not BN, biases, clip levels or steps)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(o.momentum), nesterov=bool(o.nesterov))
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optim.name={o.name!r} is unknown: choose sgd, adam or adamw")


def build_scheduler(opt, s: DictConfig, epochs: int):
    warm = int(s.get("warmup_epochs", 0))

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        if s.name == "cosine":
            t = (epoch - warm) / max(1, epochs - warm)
            return 0.5 * (1 + math.cos(math.pi * t))
        if s.name == "step":
            return float(s.gamma) ** sum(epoch >= m for m in s.milestones)
        if s.name == "constant":
            return 1.0
        raise ValueError(f"sched.name={s.name!r} is unknown: choose cosine, step or constant")

    factor(0)  # validate the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sample_modes(modes_desc: list[int], how: str, k: int, gen: random.Random) -> list[int]:
    """``all``: every mode. ``sandwich``: highest + lowest + k random others (highest first)."""
    if how == "all" or len(modes_desc) <= 2:
        return list(modes_desc)
    middle = modes_desc[1:-1]
    picked = set(gen.sample(middle, min(k, len(middle))))
    return [modes_desc[0]] + [m for m in middle if m in picked] + [modes_desc[-1]]


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(y[:, None])
    return hit[:, 0].sum(), hit.any(dim=1).sum()


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, loader, modes, amp_ctx=contextlib.nullcontext, dist_ctx: DistContext | None = None) -> dict:
    """Top-1/top-5/loss per mode; each batch is read once and run through every mode."""
    model.eval()
    device = next(model.parameters()).device
    sums = {m: torch.zeros(4, device=device, dtype=torch.float64) for m in modes}  # loss, top1, top5, n
    for x, y in loader:
        for m in modes:
            set_bit_mode(model, m)
            with amp_ctx():
                logits = model(x)
            logits = logits.float()
            c1, c5 = topk_correct(logits, y, 5)
            s = sums[m]
            s[0] += F.cross_entropy(logits, y, reduction="sum")
            s[1] += c1
            s[2] += c5
            s[3] += y.numel()
    out = {}
    for m in modes:
        s = dist_ctx.sum_tensor(sums[m]) if dist_ctx else sums[m]
        n = max(1.0, s[3].item())
        out[m] = {"loss": s[0].item() / n, "top1": 100 * s[1].item() / n, "top5": 100 * s[2].item() / n}
    return out


# ----------------------------------------------------------------------------- one step
class ModeTimer:
    """Seconds spent in each mode's forward+backward, without host syncs in the step.

    CPU: wall clock around each mode. CUDA: a pair of events per mode and step, read once
    at the end of the epoch (after the epoch's own sync), so timing never stalls the GPU.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[int, float] = {}
        self._pending: list[tuple[int, object, object]] = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, mode: int, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((mode, started, end))
        else:
            self.seconds[mode] = self.seconds.get(mode, 0.0) + time.perf_counter() - started

    def totals(self) -> dict[int, float]:
        if self._pending:
            self._pending[-1][2].synchronize()
            for mode, a, b in self._pending:
                self.seconds[mode] = self.seconds.get(mode, 0.0) + a.elapsed_time(b) / 1000
            self._pending.clear()
        return self.seconds


def backward_modes(model, forward, x, y, modes: list[int], loss_fn: QuantizableLoss, distill: bool,
                   amp_ctx=contextlib.nullcontext, scaler=None, stats: "EpochStats | None" = None,
                   timer: ModeTimer | None = None) -> None:
    """Forward + backward of every mode in ``modes`` (highest first) on one batch.

    Each mode's backward runs right after its forward so only one graph is alive at a
    time; gradients accumulate, which equals the backward of the summed loss because
    teachers are detached. ``distill=False`` gives plain CE per mode (dedicated runs).
    """
    logits_by_mode = {}
    for m in modes:
        t0 = timer.start() if timer is not None else None
        set_bit_mode(model, m)
        with amp_ctx():
            logits = forward(x)
        t = loss_fn.teacher_mode(m, modes) if distill else None
        loss, ce = loss_fn.mode_loss(logits, y, logits_by_mode.get(t), m == modes[0])
        (scaler.scale(loss) if scaler is not None else loss).backward()
        logits_by_mode[m] = logits.detach()
        if stats is not None:
            with torch.no_grad():
                stats.add(m, ce.detach(), *topk_correct(logits.detach(), y, 5), y.numel())
        if timer is not None:
            timer.stop(m, t0)


def joint_loss(model, x, y, modes: tuple[int, ...], loss_fn: QuantizableLoss, distill: bool,
               amp_ctx=contextlib.nullcontext):
    """Every mode's forward and loss in one function: ``(summed loss, {mode: (ce, top1
    hits, top5 hits)})``; the caller runs one backward.

    Compiled whole (``trainer.compile_scope=step``) this is one forward graph and one
    backward graph per step instead of one pair per mode — far fewer launches and
    graph replays where the per-mode step is launch-bound (a CIFAR network on a large
    GPU) — at the price of all modes' activations alive at once.
    """
    logits_by_mode, per_mode, total = {}, {}, None
    for m in modes:
        set_bit_mode(model, m)
        with amp_ctx():
            logits = model(x)
        t = loss_fn.teacher_mode(m, list(modes)) if distill else None
        loss, ce = loss_fn.mode_loss(logits, y, logits_by_mode.get(t), m == modes[0])
        logits_by_mode[m] = logits.detach()
        per_mode[m] = (ce.detach(), *topk_correct(logits.detach(), y, 5))
        total = loss if total is None else total + loss
    return total, per_mode


# ----------------------------------------------------------------------------- the trainer
@dataclass
class EpochStats:
    loss: dict = field(default_factory=dict)
    correct: dict = field(default_factory=dict)
    correct5: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)

    def add(self, mode: int, ce: torch.Tensor, top1_hits, top5_hits, n: int) -> None:
        """Accumulate on the device (no host sync): summed CE, hits and images of ``mode``."""
        self.loss[mode] = self.loss.get(mode, 0) + ce * n
        self.correct[mode] = self.correct.get(mode, 0) + top1_hits
        self.correct5[mode] = self.correct5.get(mode, 0) + top5_hits
        self.seen[mode] = self.seen.get(mode, 0) + n


class Trainer:
    """Owns one run directory. ``fit()`` trains to ``trainer.epochs`` (resuming if possible)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, console=None, resume: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console
        self.resume = resume
        t = cfg.trainer
        self.dist = DistContext.from_env(t.device)
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        if t.get("num_threads"):
            torch.set_num_threads(int(t.num_threads))
        self.kind = t.kind
        self.epochs = int(t.epochs)
        self.loss_fn = QuantizableLoss(bool(cfg.loss.consistency), cfg.loss.target, float(cfg.loss.weight),
                                       float(cfg.loss.ce_weight), float(cfg.loss.temperature))
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("trainer.amp=fp16 needs CUDA; use bf16 or none on CPU")
        self.channels_last = bool(t.channels_last)
        if self.device.type == "cuda":
            # fixed input shapes: let cuDNN pick the fastest convolution per layer once
            torch.backends.cudnn.benchmark = True

    # -- setup ---------------------------------------------------------------------------
    def amp_ctx(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def setup(self):
        cfg, t = self.cfg, self.cfg.trainer
        torch.manual_seed(int(cfg.seed))
        random.seed(int(cfg.seed))
        global_batch = int(t.batch_size)
        if global_batch % self.dist.world:
            raise ValueError(f"trainer.batch_size={global_batch} is not divisible by {self.dist.world} processes")
        self.data = build_data(cfg.data, global_batch // self.dist.world, int(t.eval_batch_size), self.device,
                               int(cfg.seed), self.channels_last, self.dist.rank, self.dist.world,
                               int(cfg.data.get("workers", 4)))
        if self.dist.is_main:
            info = {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
                    "image_size": self.data.image_size, "num_train": self.data.num_train, "num_val": self.data.num_val}
            (self.run_dir / "data_info.json").write_text(json.dumps(info, indent=1))
        self.spec = quant_spec(cfg)
        self.model = build_model(cfg.model.name, self.spec, self.data.num_classes, self.data.in_channels,
                                 **dict(cfg.model.get("kwargs") or {}))
        min_size = int(cfg.model.get("min_image_size", 1))
        if self.data.image_size < min_size:
            raise ValueError(f"model {cfg.model.name} needs images of at least {min_size}px, "
                             f"data has {self.data.image_size}px")
        if cfg.model.get("torchvision_weights"):
            state = safe_load(cfg.model.torchvision_weights)
            load_torchvision_weights(self.model, state.get("state_dict", state))
        self.model.to(self.device)
        if self.dist.enabled and t.get("sync_bn") and self.device.type == "cuda":
            # batch statistics over the global batch (NCCL); on CPU/gloo BN stays per process
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.dist.broadcast_model(self.model)
        lr = float(cfg.optim.lr)
        if cfg.optim.get("scale_lr_by_batch"):  # lr given for batch 256 (ImageNet convention)
            lr = lr * global_batch / 256
        self.lr = lr
        self.optimizer = build_optimizer(self.model, cfg.optim, lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, self.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.modes_desc = sorted(self.spec.modes, reverse=True)
        self.forward = self.model
        self.step_fn = None
        self.cudagraphs = False
        if t.get("compile"):
            mode = compile_mode(t.compile)
            self.cudagraphs = self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
            if t.get("compile_scope", "mode") == "step":
                distill = self.kind == "quantizable"
                step = functools.partial(joint_loss, self.model, loss_fn=self.loss_fn, distill=distill,
                                         amp_ctx=self.amp_ctx)
                self.step_fn = compile_step(step, mode_sets(self.modes_desc, t.mode_sampling, int(t.sandwich_k)), mode)
            else:
                self.forward = compile_model(self.model, len(self.modes_desc), mode)
            self.log(f"torch.compile (mode {mode}, scope {t.get('compile_scope', 'mode')}): the first steps compile "
                     "one graph per bit mode (or mode list) and take minutes; later steps run compiled")
        self.start_epoch, self.best = 0, -1.0
        self.history: list[dict] = []

    # -- files ---------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def write_status(self, state: str, epoch: int, message: str = "") -> None:
        if not self.dist.is_main:
            return
        tmp = self.run_dir / ".status.json.tmp"
        tmp.write_text(json.dumps({"state": state, "epoch": epoch, "epochs": self.epochs, "message": message,
                                   "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
        os.replace(tmp, self.run_dir / "status.json")

    def _append_metrics(self, rows: list[dict]) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        if not new:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != METRIC_FIELDS:  # written by an older qdnn: rewrite with today's columns
                self._trim_metrics(10**9)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)

    def _trim_metrics(self, last_epoch: int) -> None:
        """Drop rows of epochs after the checkpoint (written just before a crash)."""
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= last_epoch]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self.history = rows

    def checkpoint_state(self, epoch: int) -> dict:
        return {
            "format": "qdnn-checkpoint-1",
            "model": quantizable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best": self.best,
            "model_name": self.cfg.model.name,
            "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels,
            "image_size": self.data.image_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "torch_rng": torch.get_rng_state(),
        }

    def try_resume(self) -> None:
        if not (self.resume and self.ckpt_path.exists()):
            return
        ck = safe_load(self.ckpt_path)
        if ck.get("model_name") != self.cfg.model.name:
            raise CheckpointError(f"{self.ckpt_path} is a {ck.get('model_name')} run, this config builds "
                                  f"{self.cfg.model.name}; use another out_dir")
        load_quantizable_state_dict(self.model, ck["model"], str(self.ckpt_path))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
        self.start_epoch, self.best = int(ck["epoch"]), float(ck["best"])
        if self.dist.is_main:
            self._trim_metrics(self.start_epoch)
        self.log(f"resumed from {self.ckpt_path} after epoch {self.start_epoch}")

    def log(self, msg: str) -> None:
        if self.dist.is_main and self.console is not None:
            self.console.print(msg)

    # -- one step ------------------------------------------------------------------------
    def train_step(self, x, y, modes: list[int], stats: EpochStats, timer: ModeTimer) -> None:
        if self.cudagraphs:  # a new step: last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_fn is not None:  # one compiled graph for all modes: per-mode time is not separable
            loss, per_mode = self.step_fn(x, y, tuple(modes))
            self.scaler.scale(loss).backward()  # unchanged loss unless fp16
            for m, (ce, c1, c5) in per_mode.items():
                stats.add(m, ce, c1, c5, y.numel())
        else:
            backward_modes(self.model, self.forward, x, y, modes, self.loss_fn, self.kind == "quantizable",
                           self.amp_ctx, self.scaler, stats, timer)
        self.dist.average_gradients(self.model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``trainer.epochs``; the caller holds the run directory's lock."""
        self.setup()
        self.try_resume()
        return self._fit()

    def _fit(self) -> dict:
        t = self.cfg.trainer
        data = self.data
        mode_rng = random.Random()
        max_steps = t.get("max_steps_per_epoch")
        eval_every = max(1, int(t.get("eval_every", 1)))
        log_every = max(1, int(t.get("log_every", 20)))
        progress = make_progress(self.console, bool(t.get("progress", True)) and self.dist.is_main)
        self.write_status("running", self.start_epoch)
        last_eval = None
        stop_after = t.get("stop_after")
        end_epoch = self.epochs if not stop_after else min(self.epochs, self.start_epoch + int(stop_after))
        with progress:
            for epoch in range(self.start_epoch, end_epoch):
                data.train.set_epoch(epoch)
                mode_rng.seed(int(self.cfg.seed) * 7919 + epoch)
                self.model.train()
                stats = EpochStats()
                timer = ModeTimer(self.device)
                steps = len(data.train) if not max_steps else min(len(data.train), int(max_steps))
                task = progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, info="")
                t_epoch = time.perf_counter()
                data_time, n_images = 0.0, 0
                t_data = time.perf_counter()
                for step, (x, y) in enumerate(data.train):
                    if step >= steps:
                        break
                    data_time += time.perf_counter() - t_data
                    modes = sample_modes(self.modes_desc, t.mode_sampling, int(t.sandwich_k), mode_rng)
                    self.train_step(x, y, modes, stats, timer)
                    n_images += y.numel()
                    if (step + 1) % log_every == 0 or step + 1 == steps:
                        self._check_finite(stats, epoch, step)
                        elapsed = time.perf_counter() - t_epoch
                        info = " ".join(f"{m}b:{(stats.loss[m] / stats.seen[m]).item():.3f}" for m in stats.loss)
                        progress.update(task, completed=step + 1,
                                        info=f"loss {info} | {n_images * self.dist.world / elapsed:.0f} img/s")
                    t_data = time.perf_counter()
                train_seconds = time.perf_counter() - t_epoch
                self._check_finite(stats, epoch, steps)
                progress.remove_task(task)
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.dist.broadcast_buffers(self.model)
                ev, eval_seconds, is_best = None, 0.0, False
                if (epoch + 1) % eval_every == 0 or epoch + 1 == self.epochs:
                    t_eval = time.perf_counter()
                    ev = last_eval = evaluate(self.model, data.val, self.modes_desc, self.amp_ctx, self.dist)
                    eval_seconds = time.perf_counter() - t_eval
                    score = sum(r["top1"] for r in ev.values()) / len(ev)
                    is_best = score > self.best
                    self.best = max(self.best, score)
                rows = self._epoch_rows(epoch + 1, stats, timer.totals(), ev, lr, train_seconds, eval_seconds,
                                        data_time / max(train_seconds, 1e-9), n_images)
                if self.dist.is_main:
                    self._append_metrics(rows)
                    self.history += rows
                    state = self.checkpoint_state(epoch + 1)
                    atomic_save(state, self.ckpt_path)
                    if is_best:
                        atomic_save(state, self.run_dir / "best.pt")
                    self.write_status("running", epoch + 1)
                    self.log(epoch_line(epoch + 1, self.epochs, ev, stats, train_seconds))
        if last_eval is None:  # nothing left to train: report the stored last epoch
            last_eval = self._last_eval_from_history()
        if end_epoch < self.epochs:  # time-boxed invocation: leave a resumable run
            self.write_status("stopped", end_epoch, "trainer.stop_after reached; run again to continue")
            self.log(f"stopped after epoch {end_epoch} of {self.epochs} (trainer.stop_after); run again to resume")
            return last_eval
        results = self._write_results(last_eval)
        self.write_status("finished", self.epochs)
        self.dist.barrier()
        return results

    def _check_finite(self, stats: EpochStats, epoch: int, step: int) -> None:
        for m, v in stats.loss.items():
            if not torch.isfinite(v).item():
                kept = f"the last good checkpoint (epoch {epoch}) is kept in {self.ckpt_path}" if epoch else "no checkpoint was written"
                self.write_status("failed", epoch, f"loss became non-finite in mode {m}")
                raise TrainingDiverged(
                    f"loss became {v.item()} in bit mode {m} at epoch {epoch + 1}, step {step + 1}; "
                    f"stopping ({kept}); try a lower optim.lr"
                )

    def _epoch_rows(self, epoch, stats, mode_seconds, ev, lr, train_s, eval_s, data_share, n_images) -> list[dict]:
        peak = peak_memory_mb(self.device)
        rows = []
        for m in self.modes_desc:
            seen = stats.seen.get(m)
            if seen:
                seen_all = self.dist.sum_tensor(torch.tensor([float(seen)], device=self.device)).item() if self.dist.enabled else seen
                mode_s = mode_seconds.get(m)
                # per-mode throughput from that mode's own forward+backward time
                ips = seen_all / mode_s if mode_s else n_images * self.dist.world / train_s
                rows.append({"epoch": epoch, "mode": m, "split": "train",
                             "loss": round((stats.loss[m] / seen).item(), 6),
                             "top1": round(100 * float(stats.correct[m]) / seen, 4),
                             "top5": round(100 * float(stats.correct5[m]) / seen, 4),
                             "lr": lr, "images": int(seen_all), "seconds": round(mode_s if mode_s else train_s, 4),
                             "images_per_s": round(ips, 2), "epoch_seconds": round(train_s, 4), "data_time_share": round(data_share, 5),
                             "peak_mem_mb": round(peak, 1)})
        for m in self.modes_desc if ev else ():
            r = ev[m]
            rows.append({"epoch": epoch, "mode": m, "split": "val", "loss": round(r["loss"], 6),
                         "top1": round(r["top1"], 4), "top5": round(r["top5"], 4), "lr": lr,
                         "images": self.data.num_val, "seconds": round(eval_s, 4), "images_per_s": round(self.data.num_val * len(ev) / max(eval_s, 1e-9), 2),
                         "epoch_seconds": round(eval_s, 4), "data_time_share": "", "peak_mem_mb": round(peak, 1)})
        return rows

    def _last_eval_from_history(self) -> dict | None:
        val = [r for r in self.history if r["split"] == "val"]
        if not val:
            return None
        last = max(int(r["epoch"]) for r in val)
        return {int(r["mode"]): {"loss": float(r["loss"]), "top1": float(r["top1"]), "top5": float(r["top5"])}
                for r in val if int(r["epoch"]) == last}

    def _write_results(self, ev: dict) -> dict:
        if not self.dist.is_main:
            return ev
        best_by_mode = {}
        for r in self.history:
            if r["split"] == "val":
                m = int(r["mode"])
                best_by_mode[m] = max(best_by_mode.get(m, 0.0), float(r["top1"]))
        with open(self.run_dir / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
            w.writeheader()
            for m in self.modes_desc:
                w.writerow({"mode": m, "top1": round(ev[m]["top1"], 4), "top5": round(ev[m]["top5"], 4),
                            "loss": round(ev[m]["loss"], 6), "best_top1": round(best_by_mode.get(m, ev[m]["top1"]), 4),
                            "epochs": self.epochs, "calibrated": False})
        return ev


def epoch_line(epoch, epochs, ev, stats, seconds) -> str:
    if ev is None:  # not an evaluation epoch (trainer.eval_every): show training loss
        cells = "  ".join(f"{mode_label(m)} {(stats.loss[m] / stats.seen[m]).item():.3f}"
                          for m in sorted(stats.loss, reverse=True))
        return f"epoch {epoch}/{epochs}  train loss: {cells}  ({seconds:.1f}s train)"
    cells = "  ".join(f"{mode_label(m)} {r['top1']:.2f}" for m, r in sorted(ev.items(), reverse=True))
    return f"epoch {epoch}/{epochs}  val top-1: {cells}  ({seconds:.1f}s train)"



def compile_mode(value) -> str:
    """``trainer.compile``: true means torch.compile's default mode, or name a mode."""
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return value
    raise ValueError(f"trainer.compile={value!r} is not allowed: choose false, true or one of {', '.join(COMPILE_MODES)}")


def mode_sets(modes_desc: list[int], how: str, k: int) -> int:
    """How many different mode lists :func:`sample_modes` can return (graphs to compile)."""
    if how == "all" or len(modes_desc) <= 2:
        return 1
    return math.comb(len(modes_desc) - 2, min(k, len(modes_desc) - 2))


def _compile_budget(graphs: int) -> None:
    """Drop earlier graphs, allow ``graphs`` per code object, fail loudly past it."""
    import torch._dynamo as dynamo

    dynamo.reset()
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(8, graphs))
    if hasattr(dynamo.config, "fail_on_recompile_limit_hit"):
        dynamo.config.fail_on_recompile_limit_hit = True


def compile_step(step, n_mode_sets: int, mode: str = "default"):
    """torch.compile of a whole :func:`joint_loss` step, one graph per mode list
    (sandwich sampling draws several) and train/eval state."""
    _compile_budget(2 * n_mode_sets + 2)
    # dynamic=False: the mode list must stay constants (a layer's BN key is str(bits)),
    # never become symbolic after the second list is seen
    return torch.compile(step, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)


def compile_model(model, n_modes: int, mode: str = "default"):
    """torch.compile with room for one graph per bit mode × train/eval; a recompile past
    the limit raises instead of silently running eager. ``reduce-overhead`` adds CUDA
    graphs, which matter here: a CIFAR ResNet-20 step is launch-bound on a large GPU.

    Dynamo counts recompiles per code object, i.e. over every instance of a model
    class in the process, so graphs of models compiled earlier are dropped first: the
    budget is this model's alone (one compiled model per process at a time).
    """
    _compile_budget(2 * n_modes + 2)
    return torch.compile(model, mode=None if mode == "default" else mode)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def remove_task(self, *a):
        pass


def make_progress(console, enabled: bool):
    if not enabled or console is None:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, transient=True)
