"""ONNX Runtime on any edgetl ONNX file (fp32, fp16, int8 Q/DQ), CPU, CUDA or TensorRT EP."""

from __future__ import annotations

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, ModelError, first_line
from edgetl.portable.rows import ort_timed
from edgetl.runtime.base import Backend

_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
              "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def activate_impl(self) -> ModelCard:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed", "pip install onnxruntime (or onnxruntime-gpu)") from None
        card = ModelCard.from_onnx(self.model_path)
        kind = self.device.split(":")[0]
        wanted = _PROVIDERS.get(kind)
        if wanted is None:
            raise BackendUnavailable(f"onnxruntime: unknown device '{self.device}'", f"use one of {', '.join(_PROVIDERS)}")
        if wanted[0] not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime: {wanted[0]} is not available in this onnxruntime build",
                                     "install onnxruntime-gpu for CUDA/TensorRT, or use --device cpu")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.options.get("threads"):
            opts.intra_op_num_threads = int(self.options["threads"])
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=wanted)
        except Exception as e:
            raise ModelError(f"{self.model_path}: onnxruntime cannot load it ({first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name
        return card

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def describe(self) -> dict:
        out = super().describe()
        if self.is_active:
            out["provider"] = self.session.get_providers()[0]
        out["timed"] = ort_timed(self.device == "cpu")
        return out

    def deactivate_impl(self) -> None:
        del self.session
