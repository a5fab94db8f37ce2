"""What `edgetl bench` runs: the settings, with the comma lists of the command line (`torch,onnxruntime`, `1,8`)
parsed here so a YAML list works as well."""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import Field, field_validator

from edgetl.choices import BackendName, DeviceName, PrecisionName, values
from edgetl.stage import Settings

DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100


def _names(value: Any) -> Any:
    """"a, B,c" -> ["a", "b", "c"]; a list passes through, its items stripped and lower-cased."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip().lower() for i in items if str(i).strip()]


class BenchSettings(Settings):
    data: str | None = None                     # ImageFolder DIR/<class>/*; None: the run's own val split
    backends: list[BackendName] = Field(default_factory=lambda: list(values(BackendName)))
    precisions: list[PrecisionName] | None = None  # None: every model file the run has
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    warmup: int = Field(DEFAULT_WARMUP, ge=0)    # untimed calls first
    iterations: int = Field(DEFAULT_ITERATIONS, ge=1)  # timed calls per row (unless duration)
    duration: float | None = None                # seconds per row instead of iterations
    device: DeviceName = "cpu"                   # torch and onnxruntime rows; a backend may run elsewhere
    threads: int | None = Field(None, ge=1)      # CPU threads for backends that take them
    limit: int | None = Field(None, ge=1)        # score top-1 on the first N images only
    cuda_graph: bool = False                     # backends that can replay a CUDA graph do

    @field_validator("data", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, v: Any) -> Any:
        names = _names(v)
        return names or list(values(BackendName))

    @field_validator("precisions", mode="before")
    @classmethod
    def _precisions(cls, v: Any) -> Any:
        return _names(v) or None

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _batch_sizes(cls, v: Any) -> list[int]:
        items = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
        try:
            sizes = [int(str(i).strip()) for i in items if str(i).strip()]
        except ValueError:
            sizes = []
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"{v!r}: expected positive integers, e.g. 1,8")
        return sorted(set(sizes))

    @field_validator("duration")
    @classmethod
    def _seconds(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):  # nan passes `<= 0` and would time forever
            raise ValueError(f"{v}: give seconds > 0")
        return v

    @property
    def timed_iterations(self) -> int | None:
        """Calls per row; None when each row is timed for `duration` seconds instead."""
        return None if self.duration is not None else self.iterations
