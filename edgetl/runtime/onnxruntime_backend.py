"""ONNX Runtime on any edgetl ONNX graph (fp32, fp16, int8 Q/DQ), from a file or from its bytes; CPU, CUDA or
TensorRT EP."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, ModelError, first_line
from edgetl.portable.forms import PRECISIONS, U8S8, serving_form
from edgetl.portable.rows import ort_timed
from edgetl.portable.runners import ORT_PROVIDERS, OrtRunner, RunnerError
from edgetl.runtime.base import Backend
from edgetl.runtime.registry import register_backend

_PROVIDERS = ORT_PROVIDERS  # the provider rule is the device's too (portable/runners.py)


@register_backend
class OnnxRuntimeBackend(Backend):
    """Options: `threads` (intra-op threads), `card` (a ModelCard to use instead of the graph's own, for a graph
    built in memory that carries none), `exact` (graph optimizations off: a Q/DQ graph then runs as the
    arithmetic it defines -- DequantizeLinear, then the float op -- instead of through ONNX Runtime's fused
    int8 kernels, whose result depends on the CPU's instruction set; see docs/quantize.md)."""

    name = "onnxruntime"
    devices = tuple(_PROVIDERS)  # "tensorrt": ONNX Runtime's TensorRT execution provider
    precisions = PRECISIONS
    options_taken = ("threads", "card", "exact")
    precision_notes = {"bf16": "edgetl writes no bf16 ONNX or engine (quantize makes fp16 and int8); bf16 is a "
                               "torch-only row"}

    @classmethod
    def available(cls, device: str) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        wanted = _PROVIDERS.get(device.split(":")[0])
        if wanted is None:
            return f"onnxruntime: unknown device '{device}' (use one of {', '.join(_PROVIDERS)})"
        if wanted[0] not in ort.get_available_providers():
            return f"onnxruntime: {wanted[0]} is not available in this onnxruntime build"
        return None

    @classmethod
    def model_file(cls, run, precision: str, device: str) -> Path:
        """On the CPU the int8 row uses the cpu-form graph (U8S8) when it exists: the TensorRT form (S8S8) is
        slow on x86 kernels."""
        form = serving_form(precision, device, {U8S8.name: (run.path / U8S8.file).exists()})
        path = run.path / form.file
        run.require(path, hint=form.hint())
        return path

    def activate_impl(self) -> ModelCard:
        reason = self.why_not_here(self.device)
        if reason:
            raise BackendUnavailable(reason, "pip install onnxruntime-gpu for CUDA/TensorRT, or use device cpu")
        card = self.options.get("card") or self._read_card()
        model = self.model_bytes if self.model_bytes is not None else str(self.model_path)
        try:
            self.runner = OrtRunner(model, self.device, threads=self.options.get("threads"),
                                    exact=bool(self.options.get("exact")))
        except RunnerError as e:
            raise ModelError(f"{self.model_label}: {e}") from None
        self.session, self.input_name = self.runner.session, self.runner.input_name
        self.fixed_batch = self.runner.fixed_batch
        return card

    def _read_card(self) -> ModelCard:
        if self.model_bytes is None:
            return ModelCard.from_onnx(self.model_path)
        import onnx

        try:
            proto = onnx.load_from_string(self.model_bytes)
        except Exception as e:
            raise ModelError(f"{self.model_label}: not a readable ONNX model ({first_line(e)})") from None
        return ModelCard.from_onnx(proto)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.runner(x)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, RuntimeException, ...)
            raise ModelError(f"{self.model_label}: onnxruntime failed to run it ({first_line(e)})") from None

    def describe(self) -> dict:
        out = super().describe()
        if self.is_active:
            out["provider"] = self.runner.provider
        out["timed"] = ort_timed(self.device == "cpu")
        return out

    def deactivate_impl(self) -> None:
        self.runner.close()
        self.runner = self.session = None
