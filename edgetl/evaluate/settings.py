"""What `edgetl eval` is asked to do: every option with its default and its limits."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator

from edgetl.choices import BackendName, DeviceName, PrecisionName
from edgetl.stage import Settings

class EvalSettings(Settings):
    data: str | None = Field(None, description="ImageFolder DIR/<class>/*",
                             json_schema_extra={"default_text": "the run's own val split"})
    backend: BackendName = Field("torch", description="which runtime scores")
    precision: PrecisionName = Field("fp32", description="which model file of the run")
    device: DeviceName = Field("cpu", description="(tensorrt always runs on the GPU)")
    batch_size: int = Field(64, ge=1)
    json_path: str | None = Field(None, description="also write the metrics here")

    @field_validator("data", "json_path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v
