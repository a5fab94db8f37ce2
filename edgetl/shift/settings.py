"""What `edgetl shift` is asked to do: every option with its default and its limits."""

from __future__ import annotations

import os
from typing import Any, Optional

from pydantic import Field, field_validator

from edgetl.choices import SEED_MAX
from edgetl.stage import Settings


class ShiftSettings(Settings):
    """Settings of one shift check (RUN/settings/shift.yaml records the last one)."""

    data: str = Field(description="the new images: an ImageFolder DIR/<class>/* of the model's classes (labelled) "
                      "or any folder of images (unlabelled)")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="significance level of the verdicts")
    quantile: float = Field(95.0, gt=50.0, lt=100.0,
                            description="an image is unusual above this percentile of the val split's scores")
    permutations: int = Field(1000, ge=99, le=100_000, description="permutations of the MMD test")
    max_images: int = Field(1000, ge=20, description="images per side in the MMD test (a seeded, spread subset "
                            "beyond); all images get a score")
    reference_images: int = Field(2000, ge=20, description="train-split images the class means and covariance "
                                  "are fitted on (a spread subset beyond)")
    coverage_limit: float = Field(0.001, gt=0.0, lt=1.0,
                                  description="share of a tensor's values outside its int8 range that counts as "
                                  "not covered (when also over twice the share on the int8 graph's calibration images, or on val where "
                                  "those cannot be rebuilt)")
    batch_size: int = Field(16, ge=1, description="images per pass")
    threads: Optional[int] = Field(None, ge=1, description="onnxruntime threads",
                                   json_schema_extra={"default_text": "all cores"})
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the MMD test's permutations and subsets")
    top: int = Field(10, ge=0, description="images listed as least like training")

    @field_validator("data", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v
