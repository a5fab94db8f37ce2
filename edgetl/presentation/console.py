"""rich output shared by the CLI commands: one console, progress bars, tables."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def make_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


@contextlib.contextmanager
def progress_callback(description: str) -> Iterator:
    """A (done, total) callback that drives one transient rich bar."""
    with make_progress() as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def print_metrics(metrics: dict, title: str = "evaluation") -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "top1", "top5", "macro_f1", "auc_roc"):
        value = metrics.get(key)
        table.add_row(key, "n/a" if value is None else (str(value) if key == "n" else f"{value:.4f}"))
    console.print(table)
    per_class = metrics.get("per_class_accuracy") or {}
    if per_class and len(per_class) <= 30:
        console.print("per-class accuracy: " + ", ".join(
            f"{c} {'n/a' if v is None else f'{v:.3f}'}" for c, v in per_class.items()), markup=False)
