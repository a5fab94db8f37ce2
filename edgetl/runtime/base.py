"""One Backend life cycle for every runtime (as Polygraphy's runners): activate, infer, deactivate.

The public methods check state and inputs, then call the `*_impl` methods a backend writes.
Heavy imports (torch, onnxruntime, tensorrt) happen inside the implementations, so a missing
runtime fails only when it is used, with BackendUnavailable.

A backend takes its model as a path or as the file's bytes (a graph built in memory, e.g. one a quantization
search is scoring). `infer()` checks the input's shape and dtype, and pads a short batch for a model whose batch
dimension is fixed (`fixed_batch`), returning only the real images' outputs; `logits()` runs any number of
images in chunks.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError, first_line
from edgetl.portable.rows import pad_batch



class Backend(ABC):
    """A runtime. The class declares what it can do (`name`, `devices`, `precisions`) and answers, before any
    model is loaded, whether it can run here (`available`), where it runs (`device_for`), which precisions it
    refuses and why (`unsupported`), and which file of a run it loads (`model_file`)."""

    name: ClassVar[str] = "base"
    devices: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ()
    options_taken: ClassVar[tuple[str, ...]] = ()  # the keyword options this backend reads (threads, cuda_graph...)
    # why a precision outside `precisions` has no path here (the default says only that it has none)
    precision_notes: ClassVar[dict[str, str]] = {}

    # -- what the class knows without a model -----------------------------------------------------
    @classmethod
    def options_for(cls, **options: Any) -> dict[str, Any]:
        """The options this backend takes, of those given (a caller offering everything it has)."""
        return {k: v for k, v in options.items() if k in cls.options_taken and v not in (None, False)}

    @classmethod
    def available(cls, device: str) -> str | None:
        """Why this backend cannot run on `device` here (a runtime not installed, no GPU), or None."""
        return None

    @classmethod
    def why_not_here(cls, device: str) -> str | None:
        """`available(device)`, never raising: an optional runtime that breaks while being asked (a bad install,
        a driver library that throws) is a reason to skip it, not a crash of the command asking."""
        try:
            return cls.available(device)
        except Exception as e:
            return f"{cls.name}: could not check whether it runs here ({type(e).__name__}: {first_line(e)})"

    @classmethod
    def device_for(cls, device: str) -> str:
        """The device the backend runs on when `device` is asked for (most run where they are told)."""
        return device

    @classmethod
    def unsupported(cls, precision: str, device: str) -> str | None:
        """Why `precision` is no row of this backend on `device`, or None."""
        if precision in cls.precisions:
            return None
        return cls.precision_notes.get(precision) or f"{cls.name} has no {precision} path (it runs {', '.join(cls.precisions)})"

    @classmethod
    def bench_precisions(cls, device: str) -> tuple[str, ...]:
        """The precisions a bench tries when none are named (each only where the run has its model file)."""
        return tuple(p for p in cls.precisions if cls.unsupported(p, device) is None)

    @classmethod
    @abstractmethod
    def model_file(cls, run, precision: str, device: str) -> Path:
        """The file of run directory `run` (a RunDir) this backend loads at `precision` on `device`; an
        EdgetlError saying how to make it when it is missing."""

    def __init__(self, model: str | os.PathLike | bytes, device: str = "cpu", precision: str = "fp32",
                 **options: Any):
        if isinstance(model, (bytes, bytearray, memoryview)):
            self.model_path: Path | None = None
            self.model_bytes: bytes | None = bytes(model)
        else:
            self.model_path, self.model_bytes = Path(model), None
        self.device = device
        self.precision = precision
        self.options = options
        self.card: ModelCard | None = None
        self.fixed_batch: int | None = None  # set by activate_impl where the model's batch dimension is fixed
        self.is_active = False

    @property
    def model_label(self) -> str:
        """The model as an error message names it: its path, or its size when it came as bytes."""
        return str(self.model_path) if self.model_path is not None else f"<in-memory model, {len(self.model_bytes or b'')} bytes>"

    def require_path(self) -> Path:
        """The model's path, for a runtime that needs a file (a checkpoint, an engine with its sidecar)."""
        if self.model_path is None:
            raise EdgetlError(f"{self.name} backend: takes a model file, not bytes")
        return self.model_path

    # -- life cycle -------------------------------------------------------------------------------
    def activate(self) -> "Backend":
        if not self.is_active:
            self.card = self.activate_impl()
            self.is_active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """A batch in the card's input format -> float32 logits (batch, num_classes), on the host. A model with a
        fixed batch gets a short batch padded (copies of its first image) and returns only the real rows."""
        if not self.is_active:
            raise EdgetlError(f"{self.name} backend: infer() before activate()")
        expected = self.input_shape()
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise EdgetlError(f"{self.name} backend: input of shape {tuple(x.shape)}, the model takes (N, {', '.join(map(str, expected))})")
        want = self.input_dtype()
        if x.dtype != want:
            what = ("uint8 NHWC pixels: its graph does the preprocessing" if want == np.uint8
                    else "float32 NCHW normalised images")
            raise EdgetlError(f"{self.name} backend: input of dtype {x.dtype}, the model takes {what}")
        fixed = self.fixed_batch
        if fixed is None or len(x) == fixed:
            return np.asarray(self.infer_impl(x), dtype=np.float32)
        if len(x) > fixed:
            raise EdgetlError(f"{self.name} backend: a batch of {len(x)}, the model has a fixed batch of {fixed}",
                              "run more images with logits(), which splits them into batches")
        padded, n = pad_batch(x, fixed)
        return np.asarray(self.infer_impl(padded), dtype=np.float32)[:n]

    def logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 logits for every image of x, run `batch_size` at a time (the fixed batch where the model has
        one; a short last batch is padded by infer())."""
        step = self.fixed_batch or int(batch_size)
        if step < 1:
            raise EdgetlError(f"batch_size {batch_size}: give a count >= 1")
        if not self.is_active:
            raise EdgetlError(f"{self.name} backend: logits() before activate()")
        out = [self.infer(x[i:i + step]) for i in range(0, len(x), step)]
        if not out:
            return np.empty((0, self.card.num_classes if self.card else 0), dtype=np.float32)
        return np.concatenate(out)

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
                "model_file": self.model_path.name if self.model_path is not None else None,
                "timed": "infer(): host batch in, host logits out"}

    # -- to implement -----------------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> ModelCard: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:
        pass
