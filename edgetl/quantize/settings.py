"""What `edgetl quantize` is asked to do: every option with its default and its limits."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from edgetl.calibration.sampling import DEFAULT_CALIB_SIZE
from edgetl.choices import SEED_MAX, CalibMethodName, QuantPrecisionName, QuantTargetName
from edgetl.stage import Settings


class QuantizeSettings(Settings):
    """Settings of one quantization (RUN/settings/quantize.yaml records the last one that wrote files)."""

    precision: QuantPrecisionName = Field("int8", description="int8 (Q/DQ) or fp16")
    target: QuantTargetName = Field("tensorrt", description="int8 form: tensorrt (S8S8 Q/DQ), cpu (U8S8, fast on "
                                    "x86) or both")
    calib: Optional[str] = Field(None, description="calibration ImageFolder DIR/<class>/*",
                                 json_schema_extra={"default_text": "the run's train split"})
    calib_size: Optional[int] = Field(DEFAULT_CALIB_SIZE, ge=1,
                                      description="calibration images, stratified by class (all if fewer)")
    method: CalibMethodName = Field("minmax", description="calibration method; auto tries the three and keeps the "
                                    "best")
    percentile: float = Field(99.999, gt=0.0, le=100.0, description="with method percentile")
    data: Optional[str] = Field(None, description="ImageFolder to score on",
                                json_schema_extra={"default_text": "the run's val split"})
    max_drop: float = Field(1.0, allow_inf_nan=False,
                            description="top-1 points the int8 model may lose; beyond, sensitive layers stay float")
    batch_size: int = Field(32, ge=1, description="calibration batch")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the calibration sample")
    threads: Optional[int] = Field(None, ge=1, description="onnxruntime threads for scoring",
                                   json_schema_extra={"default_text": "all cores"})
    qat: bool = Field(False, description="int8 still over max_drop after the layer search: fine-tune with fake "
                      "quantization (QAT, NVIDIA ModelOpt: pip install -e \".[qat]\") and keep the better graph")
    qat_epochs: int = Field(2, ge=1, le=100, description="QAT epochs over the run's train split")
    qat_lr: float = Field(1e-4, gt=0, le=1.0, allow_inf_nan=False,
                          description="QAT learning rate (constant; a fraction of the fine-tune's)")
    qat_batch_size: Optional[int] = Field(None, ge=1, description="QAT batch",
                                          json_schema_extra={"default_text": "the fine-tune's"})
