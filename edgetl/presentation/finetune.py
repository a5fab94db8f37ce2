"""finetune on the terminal: a bar per epoch, one line per finished epoch, and the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from edgetl.presentation.console import console as default_console
from edgetl.presentation.events import RichEvents


def finetune_events(console: Console | None = None) -> RichEvents:
    """RichEvents that also print one line per finished epoch (use as a context manager)."""
    out = console or default_console
    return RichEvents(out, on_record={"epoch": lambda row: print_epoch(row, out)})


def print_epoch(row: dict[str, Any], console: Console | None = None) -> None:
    mark = " *" if row.get("best") else ""
    (console or default_console).print(
        f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f}  "
        f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f}  {row['images_per_second']:.0f} img/s{mark}",
        markup=False, soft_wrap=True, highlight=False)


def render_finetune(run: str | Path, result, console: Console | None = None) -> None:
    """The run's metrics.json (a FinetuneResult) in a few lines."""
    from edgetl.presentation.eval import print_metrics

    data = result.model_dump(mode="json")
    processes = f", trained by {data['world_size']} processes" if data.get("world_size", 1) > 1 else ""
    print_metrics(data, title=f"best epoch {data['best_epoch']} of {data['epochs_run']}")
    scored_on, chosen_on = data.get("scored_on", "val"), data.get("chosen_on", "val")
    (console or default_console).print(
        f"scored on the {scored_on} split; the epoch was chosen on {chosen_on}"
        + (" (the same images: optimistic; a DATA/test folder is scored once)" if scored_on == chosen_on else ""),
        markup=False, soft_wrap=True, highlight=False)
    (console or default_console).print(f"run: {run}{processes}", markup=False, soft_wrap=True, highlight=False)
