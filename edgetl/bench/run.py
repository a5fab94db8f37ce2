"""`edgetl bench`: latency next to accuracy, for every backend x precision x batch size this machine can run.

Every row goes through the same Backend interface (the registry's create_backend), so the harness never knows
which runtime it drives: warm-up, then timed infer() calls on a synchronised clock (perf_counter around infer() +
backend.synchronize()), then top-1 on the data through the same backend and precision. A combination that
cannot run here is skipped with its reason, and the rest still run.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.bench.data import DataSource
from edgetl.bench.machine import system_info
from edgetl.bench.plan import plan_rows, skip_entry, skipped_lines
from edgetl.bench.reference import reference, top1
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
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    notes: list[str]
    system: dict[str, Any]


def bench(run_path: str | os.PathLike, cfg: BenchSettings | None = None, events: Events = SILENT, *,
          write: bool = True) -> BenchResult:
    """Benchmark a run. Writes bench.json (the result), bench.md, bench.png and RUN/settings/bench.yaml unless
    write=False. Progress: one `benchmarking` task, a status per row; each row and skip is also an event record."""
    from edgetl.runtime import backend_class, create_backend

    cfg = cfg or BenchSettings()
    run = RunDir(run_path)
    run.require(hint="give the folder that `edgetl finetune --out` wrote")
    iterations = cfg.timed_iterations
    batch_sizes = cfg.batch_sizes
    todo, skipped = plan_rows(run, cfg.backends, cfg.precisions, cfg.device)
    for entry in skipped:
        events.record("skip", entry)
    data_items = DataSource(run, cfg.data, cfg.limit)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    per_row_steps = len(batch_sizes) * ((iterations or 50) + 1) + 1
    total, done = max(1, len(todo) * per_row_steps), 0

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        events.progress(TASK, min(done, total - 1), total)  # the task ends once, below

    events.progress(TASK, 0, total)
    for planned in todo:
        label = f"{planned.backend} {planned.precision}"
        events.status(f"{label}: loading")
        start = done
        options = backend_class(planned.backend).options_for(threads=cfg.threads, cuda_graph=cfg.cuda_graph)
        relative = _relative(planned.model_file, run.path)
        try:
            with create_backend(planned.backend, planned.model_file, device=planned.device,
                                precision=planned.precision, **options) as be:
                items, note = data_items.labelled(be.card)
                if note and note not in notes:
                    notes.append(note)
                row_top1 = None
                if items is not None:
                    events.status(f"{label}: top-1 on {len(items)} images")
                    row_top1 = top1(be, items, max(batch_sizes))
                advance()
                x_all = data_items.inputs(be.card, max(batch_sizes))
                for bs in batch_sizes:
                    if be.fixed_batch is not None and bs != be.fixed_batch:
                        # a padded batch would time the fixed batch, not bs: no such row
                        entry = skip_entry(planned.backend, planned.precision,
                                           f"batch {bs}: {relative} has a fixed batch of {be.fixed_batch}",
                                           model_file=relative)
                        skipped.append(entry)
                        events.record("skip", entry)
                        advance((iterations or 50) + 1)
                        continue
                    events.status(f"{label}: batch {bs}")
                    secs = time_infer(be, batch_of(x_all, bs), cfg.warmup, iterations, cfg.duration, tick=advance)
                    advance()
                    info = be.describe()
                    row = make_row(backend=planned.backend, precision=planned.precision, batch_size=bs,
                                   device=planned.device, model_file=relative, seconds=secs, warmup=cfg.warmup,
                                   timed=info.get("timed"), provider=info.get("provider"), top1=row_top1,
                                   n_images=None if items is None else len(items), where="local")
                    rows.append(row)
                    events.record("bench", row)
        except EdgetlError as e:
            entry = skip_entry(planned.backend, planned.precision, str(e), model_file=relative)
            skipped.append(entry)
            events.record("skip", entry)
            done = start + per_row_steps
    events.progress(TASK, total, total)
    if not rows:
        raise EdgetlError("bench: nothing could run here: " + "; ".join(skipped_lines(skipped)),
                          "see `edgetl bench --help`; export/quantize/build the model files first")

    ref = reference(run, rows, data_items, max(batch_sizes))
    compare_rows(rows, ref)
    result = BenchResult(
        edgetl_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        run=str(run.path),
        data=data_items.description,
        settings={"backends": list(cfg.backends), "precisions": cfg.precisions, "batch_sizes": batch_sizes,
                  "warmup": cfg.warmup, "iterations": iterations, "duration_s": cfg.duration, "device": cfg.device,
                  "threads": cfg.threads, "limit": cfg.limit, "cuda_graph": cfg.cuda_graph},
        reference=ref,
        rows=rows,
        skipped=skipped,
        notes=notes,
        system=system_info(),
    )
    if write:
        write_results(run, result)
        record_settings(run.path, "bench", cfg)
    return result


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
