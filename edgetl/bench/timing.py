"""Timing one backend: warm-up, then infer() calls on a synchronised clock."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgetl.bench.settings import DEFAULT_ITERATIONS, DEFAULT_WARMUP


def time_infer(backend, x: np.ndarray, warmup: int = DEFAULT_WARMUP, iterations: int | None = DEFAULT_ITERATIONS,
               duration: float | None = None, tick: Callable[[], None] | None = None) -> np.ndarray:
    """Seconds per infer() call after `warmup` untimed calls: `iterations` calls, or as many as fit in
    `duration` seconds (at least 10). Each call is timed to backend.synchronize(), so queued device work
    is inside the interval."""
    clock = time.perf_counter
    for _ in range(max(0, warmup)):
        backend.infer(x)
        backend.synchronize()
    times: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        backend.infer(x)
        backend.synchronize()
        times.append(clock() - t0)
        if tick:
            tick()
        if iterations is not None and len(times) >= iterations:
            break
        if iterations is None and clock() - start >= (duration or 0.0) and len(times) >= 10:
            break
    return np.asarray(times, dtype=np.float64)
