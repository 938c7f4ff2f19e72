"""The files of a run directory that the trainer writes, every one atomically.

``status.json`` (running / stopped / finished / failed, with a reason), ``metrics.csv``
(one row per epoch × mode × split), ``results.csv`` (the final per-mode table),
``data_info.json`` (what the data was). A crash leaves each file whole: old or new.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from ..quant.modes import parse_mode

METRIC_FIELDS = ["epoch", "mode", "split", "loss", "top1", "top5", "lr", "images", "seconds", "images_per_s",
                 "epoch_seconds", "data_time_share", "peak_mem_mb"]
RESULT_FIELDS = ["mode", "top1", "top5", "loss", "best_top1", "epochs"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_config(cfg, run_dir: Path, overrides: list[str]) -> None:
    """Record this invocation in the run directory, losing nothing an earlier one wrote:

    * ``config.yaml`` (resolved) and ``overrides.yaml``: what the run was started with,
      written once. A resumption may differ only in keys that do not change the result
      (``check_same_run``), so they stay true; ``trainer.epochs`` moved by
      ``--extend-epochs`` is the one key updated in ``config.yaml``, since it moves the
      schedule the run now follows.
    * ``invocations.yaml``: one entry appended per invocation (time, overrides, whether a
      checkpoint was there to resume), the history of what was typed.
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config, first = run_dir / "config.yaml", run_dir / "overrides.yaml"
    resumed = (run_dir / "checkpoint.pt").exists()
    if not config.exists() or not resumed:
        atomic_write_text(config, OmegaConf.to_yaml(cfg, resolve=True))
    else:
        saved = OmegaConf.load(config)
        if OmegaConf.select(saved, "trainer.epochs") != cfg.trainer.epochs:
            saved.trainer.epochs = cfg.trainer.epochs
            atomic_write_text(config, OmegaConf.to_yaml(saved, resolve=True))
    if not first.exists() or not resumed:
        atomic_write_text(first, OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    entry = OmegaConf.to_yaml(OmegaConf.create([{"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "resumed": resumed, "overrides": list(overrides)}]))
    with open(run_dir / "invocations.yaml", "a") as f:  # appended: a YAML list grows entry by entry
        f.write(entry)


def csv_text(fieldnames: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    atomic_write_text(path, csv_text(fieldnames or list(rows[0]), rows))


class RunFiles:
    """Rank 0's writer for one run directory (other ranks get one with ``enabled=False``)."""

    def __init__(self, run_dir: Path, epochs: int, enabled: bool = True):
        self.dir = Path(run_dir)
        self.epochs = epochs
        self.enabled = enabled

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def status(self, state: str, epoch: int, message: str = "") -> None:
        if self.enabled:
            atomic_write_text(self.dir / "status.json", json.dumps(
                {"state": state, "epoch": epoch, "epochs": self.epochs, "message": message,
                 "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))

    def data_info(self, info: dict) -> None:
        if self.enabled:
            atomic_write_text(self.dir / "data_info.json", json.dumps(info, indent=1))

    def read_metrics(self) -> list[dict]:
        path = self.dir / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def append_metrics(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        path = self.dir / "metrics.csv"
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != METRIC_FIELDS:  # written by an older qdnn: rewrite with today's columns
                self.trim_metrics(10**9)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)

    def trim_metrics(self, last_epoch: int) -> list[dict]:
        """Drop rows of epochs after the checkpoint (written just before a crash); returns the rest."""
        rows = [r for r in self.read_metrics() if int(r["epoch"]) <= last_epoch]
        if self.enabled and (self.dir / "metrics.csv").exists():
            atomic_write_text(self.dir / "metrics.csv",
                              csv_text(METRIC_FIELDS, [{k: r.get(k, "") for k in METRIC_FIELDS} for r in rows]))
        return rows

    def results(self, final: dict, history: list[dict], modes_desc: list) -> None:
        """``results.csv``: last evaluation per mode, and each mode's best top-1 over epochs."""
        if not self.enabled:
            return
        best: dict = {}
        for r in history:
            if r["split"] == "val":
                m = parse_mode(r["mode"])
                best[m] = max(best.get(m, 0.0), float(r["top1"]))
        rows = [{"mode": m, "top1": round(final[m]["top1"], 4), "top5": round(final[m]["top5"], 4),
                 "loss": round(final[m]["loss"], 6), "best_top1": round(best.get(m, final[m]["top1"]), 4),
                 "epochs": self.epochs} for m in modes_desc]
        write_csv(self.dir / "results.csv", rows, RESULT_FIELDS)


def last_eval(history: list[dict]) -> dict | None:
    """The last evaluated epoch of a metrics history, as ``{mode: {loss, top1, top5}}``."""
    val = [r for r in history if r["split"] == "val"]
    if not val:
        return None
    last = max(int(r["epoch"]) for r in val)
    return {parse_mode(r["mode"]): {"loss": float(r["loss"]), "top1": float(r["top1"]), "top5": float(r["top5"])}
            for r in val if int(r["epoch"]) == last}


def train_rows(epoch: int, stats, mode_seconds: dict, seen_total: dict, lr: float, train_s: float,
               data_share: float, images_per_s: float, peak_mb: float, modes_desc: list) -> list[dict]:
    """metrics.csv rows of one epoch's training, one per mode trained. A mode's images/s
    comes from its own forward+backward seconds where those were timed."""
    rows = []
    for m in list(modes_desc) + ["mixed"]:  # "mixed": the random per-layer configurations, together
        seen = stats.seen.get(m)
        if not seen:
            continue
        mode_s = mode_seconds.get(m)
        rows.append({"epoch": epoch, "mode": m, "split": "train", "loss": round(stats.mean_loss(m), 6),
                     "top1": round(100 * float(stats.correct[m]) / seen, 4),
                     "top5": round(100 * float(stats.correct5[m]) / seen, 4),
                     "lr": lr, "images": int(seen_total[m]), "seconds": round(mode_s or train_s, 4),
                     "images_per_s": round(seen_total[m] / mode_s if mode_s else images_per_s, 2),
                     "epoch_seconds": round(train_s, 4), "data_time_share": round(data_share, 5),
                     "peak_mem_mb": round(peak_mb, 1)})
    return rows


def val_rows(epoch: int, ev: dict, lr: float, num_val: int, eval_s: float, peak_mb: float,
             modes_desc: list) -> list[dict]:
    return [{"epoch": epoch, "mode": m, "split": "val", "loss": round(ev[m]["loss"], 6),
             "top1": round(ev[m]["top1"], 4), "top5": round(ev[m]["top5"], 4), "lr": lr, "images": num_val,
             "seconds": round(eval_s, 4), "images_per_s": round(num_val * len(ev) / max(eval_s, 1e-9), 2),
             "epoch_seconds": round(eval_s, 4), "data_time_share": "", "peak_mem_mb": round(peak_mb, 1)}
            for m in modes_desc]
