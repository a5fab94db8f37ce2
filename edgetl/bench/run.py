"""`edgetl bench`: latency next to accuracy, for every backend x precision x batch size this machine can run.

Every row goes through the same Backend interface (the registry's create_backend), so the harness never knows
which runtime it drives: warm-up, then timed infer() calls on a synchronised clock (perf_counter around infer() +
backend.synchronize()), then top-1 on the data through the same backend and precision. A combination that
cannot run here is skipped with its reason, and the rest still run.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.bench.data import DataSource
from edgetl.bench.machine import system_info
from edgetl.bench.plan import BenchPlan, PlannedRow, fixed_batch_refusal, plan_bench, skip_entry, skipped_lines
from edgetl.bench.reference import drop_tests, reference, row_label, scored
from edgetl.bench.settings import BenchSettings
from edgetl.bench.timing import time_infer
from edgetl.errors import EdgetlError
from edgetl.portable.rows import batch_of, compare_rows, make_row
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, record_settings

TASK = "benchmarking"


class BenchResult(Result):
    """RUN/bench.json. Rows have the keys of portable.rows.ROW_KEYS (the device writes the same rows)."""

    edgetl_version: str
    created: str
    run: str
    data: str
    settings: dict[str, Any]
    reference: dict[str, Any]
    # "backend precision" -> McNemar's test of that row's drop against the reference, on the same images
    drop_tests: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    notes: list[str]
    system: dict[str, Any]


def bench(run_path: str | os.PathLike, cfg: BenchSettings | None = None, events: Events = SILENT, *,
          write: bool = True) -> BenchResult:
    """Benchmark a run. Writes bench.json (the result), bench.md, bench.png and RUN/settings/bench.yaml unless
    write=False. Progress: one `benchmarking` task, a status per row; each row and skip is also an event record."""
    cfg = cfg or BenchSettings()
    run = RunDir(run_path)
    run.require(hint="give the folder that `edgetl finetune --out` wrote")
    plan = plan_bench(run, cfg)
    for entry in plan.skipped:
        events.record("skip", entry)
    data_items = DataSource(run, cfg.data, cfg.limit)
    measured = _Measured(skipped=plan.skipped)
    progress = _Progress(plan.total_steps, events)
    events.progress(TASK, 0, progress.total)
    for planned in plan.rows:
        _measure_row(run, cfg, plan, planned, data_items, measured, progress, events)
    events.progress(TASK, progress.total, progress.total)
    if not measured.rows:
        raise EdgetlError("bench: nothing could run here: " + "; ".join(skipped_lines(measured.skipped)),
                          "see `edgetl bench --help`; export/quantize/build the model files first")

    ref, reference_right = reference(run, measured.rows, data_items, max(plan.batch_sizes), measured.right)
    compare_rows(measured.rows, ref)
    result = BenchResult(
        edgetl_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        run=str(run.path),
        data=data_items.description,
        settings={"backends": list(cfg.backends), "precisions": cfg.precisions, "batch_sizes": cfg.batch_sizes,
                  "warmup": cfg.warmup, "iterations": plan.iterations, "duration_s": cfg.duration,
                  "device": cfg.device, "threads": cfg.threads, "limit": cfg.limit, "cuda_graph": cfg.cuda_graph},
        reference=ref,
        drop_tests=drop_tests(reference_right, measured.right),
        rows=measured.rows,
        skipped=measured.skipped,
        notes=measured.notes,
        system=system_info(),
    )
    if write:
        write_results(run, result)
        record_settings(run.path, "bench", cfg)
    return result


@dataclass
class _Measured:
    """What the rows found so far: rows timed, skips (the plan's, then those found on loading), data notes."""

    skipped: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    right: dict[str, Any] = field(default_factory=dict)  # "backend precision" -> which images it got right

    def skip(self, entry: dict[str, Any], events: Events) -> None:
        self.skipped.append(entry)
        events.record("skip", entry)


class _Progress:
    """The one `benchmarking` task's count; it reaches `total` only once, when bench() ends it."""

    def __init__(self, total: int, events: Events):
        self.total, self.done, self.events = total, 0, events

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.events.progress(TASK, min(self.done, self.total - 1), self.total)


def _measure_row(run: RunDir, cfg: BenchSettings, plan: BenchPlan, planned: PlannedRow, data_items: DataSource,
                 measured: _Measured, progress: _Progress, events: Events) -> None:
    """Load one planned row's model, score its top-1, time it at each batch size; a row that fails to load or
    run is a skip with its reason."""
    from edgetl.runtime import backend_class, create_backend

    label = f"{planned.backend} {planned.precision}"
    events.status(f"{label}: loading")
    start = progress.done
    options = backend_class(planned.backend).options_for(threads=cfg.threads, cuda_graph=cfg.cuda_graph)
    relative = _relative(planned.model_file, run.path)
    try:
        with create_backend(planned.backend, planned.model_file, device=planned.device,
                            precision=planned.precision, **options) as be:
            items, note = data_items.labelled(be.card)
            if note and note not in measured.notes:
                measured.notes.append(note)
            row_top1 = None
            if items is not None:
                events.status(f"{label}: top-1 on {len(items)} images")
                row_top1, measured.right[row_label(planned._asdict())] = scored(be, items, max(plan.batch_sizes))
            progress.advance()
            x_all = data_items.inputs(be.card, max(plan.batch_sizes))
            for bs in plan.batch_sizes:
                refusal = fixed_batch_refusal(bs, be.fixed_batch, relative)
                if refusal:
                    measured.skip(skip_entry(planned.backend, planned.precision, refusal, model_file=relative),
                                  events)
                    progress.advance(plan.steps_per_batch)
                    continue
                events.status(f"{label}: batch {bs}")
                row = _time_batch(be, planned, bs, batch_of(x_all, bs), relative, row_top1, items, cfg, progress)
                measured.rows.append(row)
                events.record("bench", row)
    except EdgetlError as e:
        measured.skip(skip_entry(planned.backend, planned.precision, str(e), model_file=relative), events)
        progress.done = start + plan.steps_per_row


def _time_batch(be, planned: PlannedRow, bs: int, x, relative: str, row_top1: float | None, items,
                cfg: BenchSettings, progress: _Progress) -> dict[str, Any]:
    """One row: `be` timed on batches of `bs`, with the row's top-1."""
    secs = time_infer(be, x, cfg.warmup, cfg.timed_iterations, cfg.duration, tick=progress.advance)
    progress.advance()
    info = be.describe()
    return make_row(backend=planned.backend, precision=planned.precision, batch_size=bs,
                    device=planned.device, model_file=relative, seconds=secs, warmup=cfg.warmup,
                    timed=info.get("timed"), provider=info.get("provider"), top1=row_top1,
                    n_images=None if items is None else len(items), where="local")


def write_results(run: RunDir, result: BenchResult) -> None:
    """bench.json, bench.md and bench.png, each written atomically."""
    from edgetl.bench.markdown import bench_markdown
    from edgetl.io import write_text
    from edgetl.plots import plot_bench

    document = result.model_dump(mode="json")
    result.write(run.bench_json)
    write_text(run.bench_md, bench_markdown(document))
    plot_bench(document, run.bench_png)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
