"""Runtime backends behind one interface, found through a registry: torch, onnxruntime, tensorrt.

A new backend is one module here with a `@register_backend` class (name, devices, precisions, available(),
model_file(), activate_impl(), infer_impl()) imported below."""

from __future__ import annotations

from edgetl.choices import BackendName, values
from edgetl.runtime.base import Backend
from edgetl.runtime.registry import (backend_class, backend_names, create_backend, register_backend,
                                     resolve_model_file)
# importing a backend module registers its class; this order is the order of BACKENDS
from edgetl.runtime import torch_backend  # noqa: F401, I001
from edgetl.runtime import onnxruntime_backend  # noqa: F401
from edgetl.runtime import tensorrt_backend  # noqa: F401

BACKENDS = values(BackendName)

__all__ = ["BACKENDS", "Backend", "backend_class", "backend_names", "create_backend", "register_backend",
           "resolve_model_file"]
