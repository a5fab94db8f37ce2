"""A TensorRT or TensorRT-RTX engine that `edgetl build` wrote: sidecar checked, I/O on the GPU, CUDA graph
as an option. The sidecar names the library, so the same code runs both flavours.

The engine itself runs in edgetl.portable.runners.TrtRunner, the same runner the device script times with
(buffers sized once at the profile's largest batch; a call is "compute + host<->device copies"); this
module adds the package's checks (sidecar, mismatch rule, profile range) and says its refusals and CUDA's
as EdgetlError lines.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError, EngineMismatch, RunDirError
from edgetl.io import sha256_file
from edgetl.portable.forms import PRECISIONS
from edgetl.portable import cuda
from edgetl.portable.runners import RunnerError, TrtRunner
from edgetl.runtime.base import Backend
from edgetl.runtime.registry import register_backend


@register_backend
class TensorRTBackend(Backend):
    """Options: `cuda_graph` (replay one CUDA graph per batch size)."""

    name = "tensorrt"
    devices = ("cuda",)
    precisions = PRECISIONS
    options_taken = ("cuda_graph",)
    precision_notes = {"bf16": "edgetl writes no bf16 ONNX or engine (quantize makes fp16 and int8); bf16 is a "
                               "torch-only row"}

    @classmethod
    def available(cls, device: str) -> str | None:
        from edgetl.tensorrt.engine import facts_here

        here, missing = facts_here()  # an engine runs through TensorRT or TensorRT-RTX, whichever is here
        return None if here else "; ".join(str(e) for e in missing.values())

    @classmethod
    def device_for(cls, device: str) -> str:
        return device if device.startswith("cuda") else "cuda"  # an engine runs only on the GPU it was built for

    @classmethod
    def model_file(cls, run, precision: str, device: str) -> Path:
        from edgetl.tensorrt.engine import find_engine

        return find_engine(run, precision)

    def activate_impl(self) -> ModelCard:
        from edgetl.tensorrt.engine import capturing_logger, init_plugins

        sidecar, trt = self._checked_sidecar()
        self._trt = trt
        self._logger = capturing_logger(trt)
        init_plugins(trt, self._logger)
        self._runner = None
        try:
            with cuda_errors(self.model_path):
                self._runner = TrtRunner(self.model_path.read_bytes(), trt, self._logger, self._said,
                                         host_code=bool(sidecar.get("version_compatible")),
                                         dla_core=sidecar.get("dla_core"))
        except RunnerError as e:
            raise self._refusal(e) from None
        self.min_batch, self.max_batch = self._runner.min_batch, self._runner.max_batch
        self.sidecar = sidecar
        return ModelCard.model_validate(sidecar["card"])

    def _checked_sidecar(self):
        """(the engine's sidecar, the library module to run it) once the package's rules accept it here."""
        from edgetl.tensorrt.engine import check_engine, facts_for_engine, import_flavour, read_sidecar

        if not self.device.startswith("cuda"):
            raise EdgetlError(f"tensorrt backend: runs on the GPU, not on '{self.device}'", "use device cuda")
        self.require_path()  # an engine is read with its sidecar: a path, not bytes
        if not self.model_path.exists():
            raise RunDirError(f"{self.model_path}: no such engine", "run `edgetl build` first")
        sidecar = read_sidecar(self.model_path)
        trt = import_flavour(sidecar["library"])
        check_engine(self.model_path, sidecar, facts_for_engine(self.model_path, sidecar, trt),
                     sha256_file(self.model_path))
        if sidecar.get("precision") not in (None, self.precision):
            raise EngineMismatch(f"{self.model_path}: is a {sidecar['precision']} engine, asked for {self.precision}")
        return sidecar, trt

    def _refusal(self, e: RunnerError) -> EdgetlError:
        """The runner's refusal as the package says it: the engine named, the fix as a hint."""
        if e.kind in ("load", "io", "output"):
            hint = "rebuild it here with `edgetl build`" if e.kind == "load" else None
            return EngineMismatch(f"{self.model_path}: {e}", hint)
        if e.kind == "context":
            return EdgetlError(f"{self.model_path}: {e}", "free GPU memory, or rebuild with a smaller batch maximum "
                                                          "(`edgetl build --batch`)")
        if e.kind == "capture":
            return EdgetlError(f"{self.model_path.name}: {e}", "run without cuda_graph")
        return EdgetlError(f"{self.model_path.name if e.kind in ('shape', 'enqueue') else self.model_path}: {e}")

    def _said(self) -> str:
        return " | ".join(self._logger.lines()[:3]) or "no reason logged"

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if not self.min_batch <= n <= self.max_batch:
            raise EdgetlError(f"{self.model_path.name}: batch {n} is outside the engine's profile "
                              f"{self.min_batch}..{self.max_batch}", "rebuild with `edgetl build --batch MIN,OPT,MAX`")
        try:
            with cuda_errors(self.model_path):
                return self._runner(x, graph=bool(self.options.get("cuda_graph")))
        except RunnerError as e:
            raise self._refusal(e) from None

    def synchronize(self) -> None:
        if getattr(self, "_runner", None) is not None:
            with cuda_errors(self.model_path):
                self._runner.synchronize()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["timed"] = "compute + host<->device copies (pageable host memory)" + (
            ", CUDA graph" if self.options.get("cuda_graph") else "")
        return out

    def deactivate_impl(self) -> None:
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None:
            with cuda_errors(self.model_path):
                runner.close()


@contextmanager
def cuda_errors(model: Path | None) -> Iterator[None]:
    """A failed CUDA call as one EdgetlError line naming the engine (the layer itself knows no edgetl)."""
    try:
        yield
    except (cuda.CudaError, cuda.CudaUnavailable) as e:
        raise EdgetlError(f"{model}: {e}", "is a CUDA GPU visible here (nvidia-smi / tegrastats)?") from None


__all__ = ["TensorRTBackend"]
