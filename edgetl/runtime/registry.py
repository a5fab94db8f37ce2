"""The backend registry (timm's register_model pattern): each Backend class registers itself by its `name`, and
every caller (bench, eval, export parity, quantize scoring) asks the registry, never branches on a name."""

from __future__ import annotations

import os
from typing import TypeVar

from edgetl.errors import BackendUnavailable
from edgetl.runtime.base import Backend

_REGISTRY: dict[str, type[Backend]] = {}
B = TypeVar("B", bound=type[Backend])


def register_backend(cls: B) -> B:
    """Class decorator: make `cls` available under `cls.name`."""
    if not cls.name or cls.name == Backend.name:
        raise TypeError(f"{cls.__name__}: a registered backend needs its own `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"backend '{cls.name}' is registered twice ({_REGISTRY[cls.name].__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend '{name}'", f"use one of {', '.join(_REGISTRY)}") from None


def create_backend(name: str, model: str | os.PathLike | bytes, device: str = "cpu", precision: str = "fp32",
                   **options) -> Backend:
    """The backend `name` for `model` (torch: model.safetensors or run dir; onnxruntime: an .onnx path or the
    graph's bytes; tensorrt: .plan). Nothing heavy is imported until activate()."""
    return backend_class(name)(model, device=device, precision=precision, **options)


def resolve_model_file(run, backend: str, precision: str = "fp32", device: str = "cpu"):
    """Which file of a run `backend` runs at `precision` on `device` (the class's own rule)."""
    return backend_class(backend).model_file(run, precision, device)
