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
    data: str | None = Field(None, description="ImageFolder DIR/<class>/*",
                             json_schema_extra={"default_text": "the run's own val split"})
    backends: list[BackendName] = Field(default_factory=lambda: list(values(BackendName)),
                                        description="comma list of torch, onnxruntime, tensorrt")
    precisions: list[PrecisionName] | None = Field(None, description="comma list of fp32, fp16, bf16, int8",
                                                   json_schema_extra={"default_text": "every model file the run has"})
    batch_sizes: list[int] = Field(default_factory=lambda: [1], description="comma list, e.g. 1,8")
    warmup: int = Field(DEFAULT_WARMUP, ge=0, description="untimed iterations first")
    iterations: int = Field(DEFAULT_ITERATIONS, ge=1, description="timed iterations per row")
    duration: float | None = Field(None, description="time each row for S seconds instead of iterations")
    device: DeviceName = Field("cpu", description="torch and onnxruntime rows; tensorrt always runs on the GPU")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch and onnxruntime")
    limit: int | None = Field(None, ge=1, description="score top-1 on the first N images only")
    cuda_graph: bool = Field(False, description="tensorrt rows replay a CUDA graph")

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
