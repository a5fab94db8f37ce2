"""`edgetl bench`, one concept per module: settings (what to run), plan (which rows, why others are skipped),
data (the images), timing (time_infer), reference (the top-1 the drop is measured against), machine
(system_info), markdown (bench.md), run (the stage: bench(run, cfg, events) -> BenchResult)."""

from __future__ import annotations

from edgetl.bench.machine import system_info
from edgetl.bench.plan import plan_rows, skipped_lines
from edgetl.bench.run import BenchResult, bench, write_results
from edgetl.bench.settings import BenchSettings
from edgetl.bench.timing import time_infer
from edgetl.portable.rows import batch_of, compare_rows, latency_stats

__all__ = ["BenchResult", "BenchSettings", "batch_of", "bench", "compare_rows", "latency_stats", "plan_rows",
           "skipped_lines", "system_info", "time_infer", "write_results"]
