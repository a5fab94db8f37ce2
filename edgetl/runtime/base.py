"""One Backend life cycle for every runtime (as Polygraphy's runners): activate, infer, deactivate.

The public methods check state and inputs, then call the `*_impl` methods a backend writes.
Heavy imports (torch, onnxruntime, tensorrt) happen inside the implementations, so a missing
runtime fails only when it is used, with BackendUnavailable.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError


class Backend(ABC):
    name: str = "base"

    def __init__(self, model_path: str | os.PathLike, device: str = "cpu", precision: str = "fp32", **options: Any):
        self.model_path = Path(model_path)
        self.device = device
        self.precision = precision
        self.options = options
        self.card: ModelCard | None = None
        self.is_active = False

    # -- life cycle -------------------------------------------------------------------------------
    def activate(self) -> "Backend":
        if not self.is_active:
            self.card = self.activate_impl()
            self.is_active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """A batch in the card's input format -> float32 logits (batch, num_classes), on the host."""
        if not self.is_active:
            raise EdgetlError(f"{self.name} backend: infer() before activate()")
        expected = self.input_shape()
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise EdgetlError(f"{self.name} backend: input of shape {tuple(x.shape)}, the model takes (N, {', '.join(map(str, expected))})")
        return np.asarray(self.infer_impl(x), dtype=np.float32)

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- helpers ----------------------------------------------------------------------------------
    def input_shape(self) -> tuple[int, int, int]:
        assert self.card is not None
        c, h, w = self.card.input_size
        return (h, w, c) if self.card.input_format == "uint8_nhwc" else (c, h, w)

    def input_dtype(self) -> np.dtype:
        assert self.card is not None
        return np.dtype(np.uint8 if self.card.input_format == "uint8_nhwc" else np.float32)

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op where infer() already returns host data."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "model_file": self.model_path.name, "timed": "infer(): host batch in, host logits out"}

    # -- to implement -----------------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> ModelCard: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:
        pass
