"""PyTorch eager (optionally torch.compile) on the fine-tuned checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, EdgetlError
from edgetl.portable.forms import FP16, FP32, INT8
from edgetl.runtime.base import Backend
from edgetl.runtime.registry import register_backend

BF16 = "bf16"  # torch-only: no ONNX or engine carries it
_DTYPES = {FP32: "float32", FP16: "float16", BF16: "bfloat16"}


@register_backend
class TorchBackend(Backend):
    """Options: `threads` (torch's process-wide CPU threads), `compile` (torch.compile)."""

    name = "torch"
    devices = ("cpu", "cuda")
    precisions = tuple(_DTYPES)
    options_taken = ("threads", "compile")
    precision_notes = {INT8: "torch has no int8 path in edgetl: the int8 model is the Q/DQ ONNX "
                               "(onnxruntime and tensorrt rows)"}

    @classmethod
    def available(cls, device: str) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "torch backend: no CUDA device here"
        return None

    @classmethod
    def unsupported(cls, precision: str, device: str) -> str | None:
        if precision in (FP16, BF16) and not device.startswith("cuda"):
            return (f"torch {precision} on the CPU is not a deployment path (slow reduced-precision kernels); "
                    "bench it with device cuda")
        return super().unsupported(precision, device)

    @classmethod
    def bench_precisions(cls, device: str) -> tuple[str, ...]:
        return (FP32, FP16) if device.startswith("cuda") else (FP32,)  # bf16 only when asked for

    @classmethod
    def model_file(cls, run, precision: str, device: str) -> Path:
        run.require(run.weights, hint="run `edgetl finetune` first")
        return run.weights

    def activate_impl(self) -> ModelCard:
        import torch

        from edgetl.models import load_trained

        if self.precision not in _DTYPES:
            raise EdgetlError(f"torch backend: precision '{self.precision}' is not one of {', '.join(_DTYPES)}")
        reason = self.why_not_here(self.device)
        if reason:
            raise BackendUnavailable(reason, "use device cpu")
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))  # process-wide: torch has no per-model setting
        model, card = load_trained(self.require_path())
        self.dtype = getattr(torch, _DTYPES[self.precision])
        model = model.to(self.device, dtype=self.dtype).eval()
        if self.device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        if self.options.get("compile"):
            model = torch.compile(model)
        self.model = model
        self._torch = torch
        return card

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, dtype=self.dtype, non_blocking=True)
            if self.device.startswith("cuda"):
                t = t.contiguous(memory_format=torch.channels_last)
            return self.model(t).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def describe(self) -> dict:
        out = super().describe()
        where = "host->GPU copy + forward + GPU->host copy" if self.device.startswith("cuda") else "forward pass on the CPU"
        out["timed"] = where + (" (torch.compile)" if self.options.get("compile") else " (eager)")
        return out

    def deactivate_impl(self) -> None:
        del self.model
