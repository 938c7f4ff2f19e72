"""What a run shows on the terminal: a progress bar per epoch and one line per epoch."""
from __future__ import annotations

from ..quant import mode_label, sort_modes


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


def epoch_line(epoch: int, epochs: int, ev: dict | None, stats, seconds: float) -> str:
    if ev is None:  # not an evaluation epoch (trainer.eval_every): show training loss
        order = sort_modes((m for m in stats.loss if m != "mixed"), descending=True) + \
            (["mixed"] if "mixed" in stats.loss else [])
        cells = "  ".join(f"{mode_label(m) if m != 'mixed' else m} {stats.mean_loss(m):.3f}" for m in order)
        return f"epoch {epoch}/{epochs}  train loss: {cells}  ({seconds:.1f}s train)"
    cells = "  ".join(f"{mode_label(m)} {ev[m]['top1']:.2f}" for m in sort_modes(ev, descending=True))
    return f"epoch {epoch}/{epochs}  val top-1: {cells}  ({seconds:.1f}s train)"
