"""`edgetl deploy` on the terminal: one device's result, a fleet's table, and the fleet's live lines (one per device)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgetl.presentation.console import console as default_console
from edgetl.presentation.events import RichEvents


def render_deploy(result, run: str | Path, console: Console | None = None) -> None:
    """One device: where the bundle went, what ran, the measured rows, where the results are."""
    from edgetl.ship.deploy import ran

    out = console or default_console
    where = result.host + (f":{result.port}" if result.port else "")
    out.print(f"on {where}: {result.remote_dir}", markup=False, soft_wrap=True)
    if result.rows:
        out.print(f"benchmarked {ran(result.rows)}", markup=False, soft_wrap=True)
        table = Table(title=f"measured on {result.facts.get('model') or where}")
        for col in ("backend", "precision", "batch", "p50 ms", "p99 ms", "img/s", "top-1", "drop"):
            table.add_column(col, justify="right")
        for r in result.rows:
            lat = r["latency_ms"]
            drop = "n/a" if r["top1_drop"] is None else f"{r['top1_drop']:+.4f}"
            table.add_row(r["backend"], r["precision"], str(r["batch_size"]), f"{lat['p50']:.2f}", f"{lat['p99']:.2f}",
                          f"{r['throughput_ips']:.1f}", f"{r['top1']:.4f}", drop)
        out.print(table)
    out.print(f"results in {Path(run) / result.device_dir}", markup=False, soft_wrap=True)


def render_fleet(result, console: Console | None = None) -> None:
    """A fleet: the device x precision x batch table, one line per failed (or unmeasured) device, the files."""
    from edgetl.ship.fleet_report import outcome_lines, summary, table
    from edgetl.rundir import RunDir

    out = console or default_console
    columns, cells = table(result)
    if cells:
        # One fleet deploy has one backend and precision: said once in the title, so the device names fit.
        same = [i for i, col in enumerate(columns) if col in ("backend", "precision", "runs on")
                and len({line[i] for line in cells}) == 1]
        title = " ".join(["edgetl fleet:"] + [cells[0][i] for i in same[:2]] + [f"on {cells[0][i]}" for i in same[2:]])
        t = Table(title=title)
        keep = [i for i in range(len(columns)) if i not in same]
        for i in keep:
            col = columns[i]
            t.add_column(col, no_wrap=col == "device", justify="left" if col in (
                "device", "board", "backend", "precision", "runs on", "power mode", "clocks") else "right")
        for line in cells:
            t.add_row(*[line[i] for i in keep])
        out.print(t)
    for line in outcome_lines(result):
        out.print(line, markup=False, soft_wrap=True, style="red" if ": FAILED: " in line else None)
    out.print(summary(result), markup=False, soft_wrap=True)
    run = RunDir(result.run)
    out.print(f"wrote {run.fleet_json}, {run.fleet_md}, {run.fleet_png}", markup=False, soft_wrap=True)


class FleetEvents(RichEvents):
    """RichEvents plus one live line per device (its current step and steps done), from `fleet_host` records;
    a device's line goes when it ends, replaced by the one line the stage prints for it. Thread-safe: the
    devices report from their own threads."""

    def __init__(self, console: Console | None = None):
        super().__init__(console)
        self._lock = threading.RLock()
        self._hosts: dict[str, Any] = {}

    def record(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "fleet_host":
            return super().record(kind, data)
        with self._lock:
            host = data["host"]
            task = self._hosts.get(host)
            if data["state"] != "running":
                if task is not None:
                    self._progress.remove_task(self._hosts.pop(host))
                return
            text = f"{host}  {data['step']}"
            if task is None:
                self._hosts[host] = self._progress.add_task(text, total=data["total"], completed=data["done"])
            else:
                self._progress.update(task, description=text, completed=data["done"], total=data["total"])

    def message(self, text: str) -> None:
        with self._lock:
            if ": FAILED: " in text:
                self.console.print(text, markup=False, soft_wrap=True, highlight=False, style="red")
            else:
                super().message(text)

    def warning(self, text: str) -> None:
        with self._lock:
            super().warning(text)

    def status(self, text: str) -> None:
        with self._lock:
            super().status(text)

    def progress(self, task: str, done: int, total: int | None) -> None:
        with self._lock:
            super().progress(task, done, total)
