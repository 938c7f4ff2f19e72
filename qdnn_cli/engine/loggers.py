"""Where epoch metrics go besides ``metrics.csv`` (always written): a registry of loggers
with one small interface, ``log_epoch(epoch, rows)`` and ``close()``, fed the same rows.

``logger=tensorboard`` writes ``<run>/tensorboard/`` (one run per folder): per mode and
split the loss, top-1 and top-5, plus lr and training images/s.
"""
from __future__ import annotations

from pathlib import Path

from ..quant import mode_label


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start_epoch: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("logger=tensorboard needs the tensorboard package: pip install 'qdnn[tensorboard]'") from None
        # purge_step: a resumed run drops events of epochs after its checkpoint
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_epoch + 1)

    def log_epoch(self, epoch: int, rows: list[dict]) -> None:
        for r in rows:
            label = str(r["mode"]) if r["mode"] == "mixed" else mode_label(r["mode"])
            for metric in ("loss", "top1", "top5"):
                self.writer.add_scalar(f"{r['split']}/{metric}/{label}", float(r[metric]), epoch)
            if r["split"] == "train":
                self.writer.add_scalar(f"train/images_per_s/{label}", float(r["images_per_s"]), epoch)
        if rows:
            self.writer.add_scalar("lr", float(rows[0]["lr"]), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"csv": None, "tensorboard": TensorBoardLogger}  # csv: metrics.csv only (always written)


def build_loggers(name: str, run_dir: Path, start_epoch: int) -> list:
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r} is unknown: choose one of {', '.join(LOGGERS)}")
    return [LOGGERS[name](run_dir, start_epoch)] if LOGGERS[name] else []
