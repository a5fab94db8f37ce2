"""`edgetl eval`'s output: the metrics table and the per-class accuracy line."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgetl.presentation.console import console as default_console


def print_metrics(metrics: Any, title: str = "evaluation", console: Console | None = None) -> None:
    """`metrics`: an EvalResult / Metrics, or the dict classification_metrics returns."""
    console = console or default_console
    if hasattr(metrics, "model_dump"):
        metrics = metrics.model_dump(mode="json")
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


def render_eval(result: Any, console: Console | None = None) -> None:
    print_metrics(result, console=console)
