"""RichEvents: stage progress drawn with rich (a spinner for status, one transient bar per counted task)."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from edgetl.presentation.console import console as default_console
from edgetl.stage import Events


class RichEvents(Events):
    """Use as a context manager around one stage call: `with RichEvents() as events: stage(run, cfg, events)`.

    `on_record` maps a record kind to a function that prints it (finetune prints one line per epoch)."""

    def __init__(self, console: Console | None = None,
                 on_record: dict[str, Callable[[dict[str, Any]], None]] | None = None):
        self.console = console or default_console
        self.on_record = dict(on_record or {})
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console, transient=True)
        self._tasks: dict[str, TaskID] = {}
        self._status: TaskID | None = None

    def __enter__(self) -> "RichEvents":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True, highlight=False)

    def warning(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, soft_wrap=True, highlight=False, style="yellow")

    def status(self, text: str) -> None:
        if self._status is None:
            self._status = self._progress.add_task(text, total=None)
        else:
            self._progress.update(self._status, description=text)

    def progress(self, task: str, done: int, total: int | None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=done, total=total)
        if total is not None and done >= total:
            self._progress.remove_task(self._tasks.pop(task))

    def record(self, kind: str, data: dict[str, Any]) -> None:
        show = self.on_record.get(kind)
        if show is not None:
            show(data)
