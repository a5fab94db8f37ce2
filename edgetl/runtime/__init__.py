"""Runtime backends behind one interface: torch, onnxruntime, tensorrt."""

from __future__ import annotations

import os

from edgetl.errors import BackendUnavailable
from edgetl.runtime.base import Backend

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def create_backend(name: str, model: str | os.PathLike | bytes, device: str = "cpu", precision: str = "fp32",
                   **options) -> Backend:
    """The backend `name` for `model` (torch: model.safetensors or run dir; onnxruntime: an .onnx path or the
    graph's bytes; tensorrt: .plan). Nothing heavy is imported until activate()."""
    if name == "torch":
        from edgetl.runtime.torch_backend import TorchBackend as cls
    elif name == "onnxruntime":
        from edgetl.runtime.onnxruntime_backend import OnnxRuntimeBackend as cls
    elif name == "tensorrt":
        try:
            from edgetl.runtime.tensorrt_backend import TensorRTBackend as cls
        except ImportError:
            raise BackendUnavailable("the tensorrt backend is not part of this edgetl build") from None
    else:
        raise BackendUnavailable(f"unknown backend '{name}'", f"use one of {', '.join(BACKENDS)}")
    return cls(model, device=device, precision=precision, **options)


def resolve_model_file(run, backend: str, precision: str = "fp32", device: str = "cpu"):
    """Which file of a run a backend runs at a precision. On the CPU, onnxruntime's int8 row uses
    the cpu-form graph (U8S8) when it exists: the TensorRT form (S8S8) is slow on x86 kernels."""

    if backend == "torch":
        run.require(run.weights, hint="run `edgetl finetune` first")
        return run.weights
    if backend == "onnxruntime":
        path = run.onnx_for(precision)
        if precision == "int8" and device == "cpu" and run.onnx_for("int8", "cpu").exists():
            path = run.onnx_for("int8", "cpu")
        hint = "run `edgetl export` first" if precision == "fp32" else f"run `edgetl quantize --precision {precision}` first"
        run.require(path, hint=hint)
        return path
    if backend == "tensorrt":
        from edgetl.engine import find_engine

        return find_engine(run, precision)
    raise BackendUnavailable(f"unknown backend '{backend}'", f"use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "create_backend", "resolve_model_file"]
