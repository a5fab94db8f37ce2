"""How the numbers are taken, one copy for both sides: the timing loop (`edgetl bench` and the device) and
top-1 over preprocessed arrays (the device; the package scores through `edgetl eval`)."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from .rows import pad_batch


def time_calls(call: Callable[[], object], warmup: int, iterations: Optional[int] = None,
               duration: Optional[float] = None, tick: Optional[Callable[[], None]] = None) -> np.ndarray:
    """Seconds per `call()` after `warmup` untimed calls: `iterations` calls, or as many as fit in `duration`
    seconds (at least 10). `call` must return only when its work is done (host data, or synchronised)."""
    clock = time.perf_counter  # looked up per call, so a test can make the clock deterministic
    for _ in range(max(0, warmup)):
        call()
    times = []
    start = clock()
    while True:
        t0 = clock()
        call()
        times.append(clock() - t0)
        if tick:
            tick()
        if iterations is not None and len(times) >= iterations:
            break
        if iterations is None and clock() - start >= (duration or 0.0) and len(times) >= 10:
            break
    return np.asarray(times, dtype=np.float64)


def top1(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, step: int,
         fixed_batch: Optional[int] = None) -> float:
    """The share of images whose largest logit is their label, `step` at a time (the fixed batch, padded, for a
    graph that takes only that)."""
    step = fixed_batch or step
    correct = 0
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        xb, n = pad_batch(chunk, step if fixed_batch else len(chunk))
        logits = np.asarray(run(xb))[:n]
        correct += int((logits.argmax(axis=1) == y[start:start + n]).sum())
    return correct / len(y)
