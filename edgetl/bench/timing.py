"""Timing one backend: warm-up, then infer() calls on a synchronised clock (the loop is portable/measure.py's,
the same the device times with)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgetl.bench.settings import DEFAULT_ITERATIONS, DEFAULT_WARMUP
from edgetl.portable.measure import time_calls


def time_infer(backend, x: np.ndarray, warmup: int = DEFAULT_WARMUP, iterations: int | None = DEFAULT_ITERATIONS,
               duration: float | None = None, tick: Callable[[], None] | None = None) -> np.ndarray:
    """Seconds per infer() call after `warmup` untimed calls: `iterations` calls, or as many as fit in
    `duration` seconds (at least 10). Each call is timed to backend.synchronize(), so queued device work
    is inside the interval."""
    def call() -> None:
        backend.infer(x)
        backend.synchronize()

    return time_calls(call, warmup, iterations, duration, tick)
