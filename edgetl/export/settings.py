"""What `edgetl export` is asked to do: every option with its default and its limits."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgetl.stage import Settings

# Opset 17: TensorRT 8.5+ parses up to 17, TensorRT 10.0 up to 20, TensorRT 11 up to 25 (docs/export.md).
DEFAULT_OPSET = 17
MIN_OPSET = 9  # oldest opset TensorRT's ONNX parser still reads
DEFAULT_TOLERANCE = 1e-4
DEFAULT_PARITY_IMAGES = 64
# protobuf cannot serialise a message over 2 GiB; keep room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


class ExportSettings(Settings):
    opset: int = Field(DEFAULT_OPSET, description="ONNX opset; 17 parses on TensorRT 8.5+, 10.x (JetPack 6) and 11.x")
    static_batch: int | None = Field(None, ge=1, description="fix the batch dimension to N",
                                     json_schema_extra={"default_text": "dynamic"})
    fuse_preprocess: bool = Field(False, description="graph takes uint8 NHWC RGB and normalises it itself")
    tolerance: float = Field(DEFAULT_TOLERANCE, ge=0, description="largest |delta logit| vs PyTorch that passes")
    simplify: bool = Field(True, description="onnxslim pass, kept only if parity holds")
    parity_images: int = Field(DEFAULT_PARITY_IMAGES, ge=1, description="validation images compared with PyTorch")
    external_data_threshold: int = Field(EXTERNAL_DATA_THRESHOLD, ge=0)  # weights beyond: model.onnx.data

    @field_validator("opset")
    @classmethod
    def _parsable(cls, v: int) -> int:
        if v < MIN_OPSET:
            raise ValueError(f"opset {v}: TensorRT's ONNX parser reads opset {MIN_OPSET} and newer "
                             f"(the default is {DEFAULT_OPSET})")
        return v
