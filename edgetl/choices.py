"""The closed vocabularies of edgetl, each defined once: a `Literal` for settings models (values stay plain
strings in the library) and an `Enum` of the same values for Typer, so the CLI refuses a wrong value itself."""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

from edgetl.portable.forms import FP16, INT8, INT8_TARGETS, PRECISIONS

PrecisionName = Literal["fp32", "fp16", "bf16", "int8"]
EnginePrecisionName = Literal[PRECISIONS]  # what an ONNX graph / engine can have baked in (edgetl.portable.forms)
QuantPrecisionName = Literal[(INT8, FP16)]
BackendName = Literal["torch", "onnxruntime", "tensorrt"]
DeviceName = Literal["cpu", "cuda"]
Int8FormName = Literal[INT8_TARGETS]  # the CLI's words for the int8 forms qdq-s8s8 (TensorRT) and qdq-u8s8 (CPU)
CheckModeName = Literal["full", "header", "none"]  # finetune's up-front image check (edgetl.data.check)


def values(literal) -> tuple[str, ...]:
    return tuple(get_args(literal))


def as_enum(name: str, literal) -> type[Enum]:
    """A str Enum whose members are the Literal's values (member name == value), for a Typer option."""
    return Enum(name, {v: v for v in values(literal)}, type=str)  # type: ignore[return-value]


Precision = as_enum("Precision", PrecisionName)
EnginePrecision = as_enum("EnginePrecision", EnginePrecisionName)
QuantPrecision = as_enum("QuantPrecision", QuantPrecisionName)
Backend = as_enum("Backend", BackendName)
Device = as_enum("Device", DeviceName)

QuantTargetName = Literal["tensorrt", "cpu", "both"]  # which int8 form(s) `quantize` writes
CalibMethodName = Literal["minmax", "entropy", "percentile", "auto"]  # auto: try the three, keep the best
QuantTarget = as_enum("QuantTarget", QuantTargetName)
CalibMethod = as_enum("CalibMethod", CalibMethodName)

BuildTargetName = Literal["tensorrt", "rtx"]  # rtx: TensorRT for RTX, ahead of time for named compute capabilities
TritonKindName = Literal["gpu", "cpu"]  # the instance kind of a Triton model

BuildTarget = as_enum("BuildTarget", BuildTargetName)
TritonKind = as_enum("TritonKind", TritonKindName)

# finetune (the CLI needs them without importing torch, so they live here rather than in edgetl.finetune)
StrategyName = Literal["linear", "partial", "full", "lp-ft"]
DistBackendName = Literal["auto", "nccl", "gloo"]  # auto: nccl on CUDA, gloo on the CPU
BaselineName = Literal["scratch", "probe"]

Strategy = as_enum("Strategy", StrategyName)
DistBackend = as_enum("DistBackend", DistBackendName)
Baseline = as_enum("Baseline", BaselineName)

CheckMode = as_enum("CheckMode", CheckModeName)

DeployBackendName = Literal["tensorrt", "onnxruntime"]  # what `edgetl deploy` runs on the device
DeployDeviceName = Literal["auto", "cpu", "cuda"]  # onnxruntime's execution provider on the device
DeployBackend = as_enum("DeployBackend", DeployBackendName)
DeployDevice = as_enum("DeployDevice", DeployDeviceName)


# --- ranges: each setting's bounds once, read by its Settings model and by the CLI option ------------------
# Image sizes a CNN/ViT input sensibly has; beyond, decoding and resizing run out of memory before training.
IMG_SIZE_MIN, IMG_SIZE_MAX = 16, 2048
SEED_MAX = 2**32 - 1            # numpy's seeds are 0 .. 2**32 - 1
DIST_TIMEOUT_MAX = 7 * 24 * 3600.0  # seconds; torch keeps the timeout as a timedelta, which inf or 1e300 overflows
FLEET_JOBS_MAX = 256            # devices deployed at once: one thread and ssh connection each
