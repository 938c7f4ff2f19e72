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


class _LineProgress(_NoProgress):
    """Progress for a log file rather than a terminal (a live bar draws nothing there): a
    line at each tenth of a task and whenever its description changes."""

    def __init__(self, console):
        self.console, self.tasks = console, {}

    def add_task(self, description, total=None, **fields):
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0, "shown": -1,
                                       **fields}
        return len(self.tasks) - 1

    def update(self, task_id, advance=0, description=None, **fields):
        t = self.tasks[task_id]
        changed = description is not None and description != t["description"]
        t.update(fields, completed=t["completed"] + advance, description=description or t["description"])
        tenth = int(10 * t["completed"] / t["total"]) if t["total"] else 0
        if changed or tenth > t["shown"]:
            t["shown"] = tenth
            info = f"  {t['info']}" if t.get("info") else ""
            self.console.print(f"{t['description']}: {t['completed']}/{t['total']}{info}", markup=False,
                               highlight=False, soft_wrap=True)


def make_progress(console, enabled: bool, lines_off_terminal: bool = False):
    """A live progress bar; off a terminal, with ``lines_off_terminal``, plain lines."""
    if not enabled or console is None:
        return _NoProgress()
    if lines_off_terminal and not console.is_terminal:
        return _LineProgress(console)
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
