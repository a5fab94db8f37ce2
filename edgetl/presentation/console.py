"""The consoles (stdout, stderr) and what several renderers share: progress bars, the epoch line, the metrics table."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def make_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


@contextlib.contextmanager
def finetune_events():
    """Events for edgetl.finetune that draw a bar per epoch and print one line per finished epoch."""
    from edgetl.finetune import Events

    with make_progress() as progress:
        state: dict = {}

        def message(text: str) -> None:
            console.print(text, markup=False, soft_wrap=True)

        def check_progress(done: int, total: int) -> None:
            if "check" not in state:
                state["check"] = progress.add_task("checking images", total=total)
            progress.update(state["check"], completed=done, total=total)
            if done == total:
                progress.remove_task(state.pop("check"))

        def epoch_start(epoch: int, epochs: int, steps: int) -> None:
            state["task"] = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps)

        def step(done: int) -> None:
            progress.update(state["task"], completed=done)

        def epoch_end(row: dict) -> None:
            progress.remove_task(state.pop("task"))
            print_epoch(row)

        yield Events(message=message, epoch_start=epoch_start, step=step, epoch_end=epoch_end,
                     check_progress=check_progress)


def print_epoch(row: dict) -> None:
    """One line per finished training epoch (a finetune 'epoch' record)."""
    mark = " *" if row.get("best") else ""
    console.print(f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f}  "
                  f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f}  "
                  f"{row['images_per_second']:.0f} img/s{mark}", markup=False, soft_wrap=True)
