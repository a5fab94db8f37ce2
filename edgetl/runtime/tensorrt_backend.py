"""A TensorRT engine that `edgetl build` wrote: sidecar checked, I/O on the GPU, CUDA graph as an option.

GPU memory, copies and graphs go through cuda-python (edgetl.runtime._cuda). Input and output buffers are
allocated once for the profile's largest batch; infer() copies the host batch in, enqueues the engine
(or replays the CUDA graph captured for that batch size) and copies the logits out, so what a timed
infer() measures is "compute + host<->device copies".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError, EngineMismatch, RunDirError
from edgetl.runtime.base import Backend


class TensorRTBackend(Backend):
    name = "tensorrt"

    def activate_impl(self) -> ModelCard:
        from edgetl.engine import capturing_logger, check_engine, import_flavour, machine_facts, read_sidecar
        from edgetl.io import sha256_file
        from edgetl.runtime import _cuda

        if not self.device.startswith("cuda"):
            raise EdgetlError(f"tensorrt backend: runs on the GPU, not on '{self.device}'", "use --device cuda")
        if not self.model_path.exists():
            raise RunDirError(f"{self.model_path}: no such engine", "run `edgetl build` first")
        sidecar = read_sidecar(self.model_path)
        trt = import_flavour(sidecar["library"])
        check_engine(self.model_path, sidecar, machine_facts(sidecar["library"], trt), sha256_file(self.model_path))
        if sidecar.get("precision") not in (None, self.precision):
            raise EngineMismatch(f"{self.model_path}: is a {sidecar['precision']} engine, asked for {self.precision}")

        self._logger = capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if sidecar.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # the lean runtime ships inside the plan
        if sidecar.get("dla_core") is not None:
            self._runtime.DLA_core = int(sidecar["dla_core"])
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            said = " | ".join(self._logger.lines()[:3]) or "no reason logged"
            raise EngineMismatch(f"{self.model_path}: TensorRT {trt.__version__} refused to load it: {said}",
                                 "rebuild it here with `edgetl build`")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineMismatch(f"{self.model_path}: has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        lo, _opt, hi = engine.get_tensor_profile_shape(self._in, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        card = ModelCard.model_validate(sidecar["card"])
        sample = int(np.prod(tuple(hi)[1:]))
        self._graphs: dict[int, Any] = {}
        self._shape: tuple | None = None
        self._stream = self._d_in = self._d_out = None
        try:  # a failure half-way must not leak the stream or GPU memory already taken
            self._stream = _cuda.Stream()
            self._d_in = _cuda.DeviceBuffer(self.max_batch * sample * self._in_dtype.itemsize)
            self._d_out = _cuda.DeviceBuffer(self.max_batch * card.num_classes * self._out_dtype.itemsize)
            self._context.set_tensor_address(self._in, int(self._d_in.ptr))
            self._context.set_tensor_address(self._out, int(self._d_out.ptr))
        except BaseException:
            self.deactivate_impl()
            raise
        self.sidecar = sidecar
        return card

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if not self.min_batch <= n <= self.max_batch:
            raise EdgetlError(f"{self.model_path.name}: batch {n} is outside the engine's profile "
                              f"{self.min_batch}..{self.max_batch}", "rebuild with `edgetl build --batch MIN,OPT,MAX`")
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        if self._shape != x.shape:
            self._context.set_input_shape(self._in, x.shape)
            self._shape = x.shape
        out = np.empty(tuple(self._context.get_tensor_shape(self._out)), dtype=self._out_dtype)
        self._stream.upload(self._d_in, x)
        if self.options.get("cuda_graph"):
            self._graph_for(n).launch(self._stream)
        else:
            self._enqueue()
        self._stream.download(out, self._d_out)
        self._stream.synchronize()
        return out

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle_int):
            raise EdgetlError(f"{self.model_path.name}: TensorRT enqueue failed: "
                              + " | ".join(self._logger.lines()[:3]))

    def _graph_for(self, n: int):
        """The CUDA graph of one enqueue at batch n, captured after a plain run (TensorRT's advice:
        the first enqueue after a shape change may do work that cannot be captured)."""
        if n not in self._graphs:
            self._enqueue()
            self._stream.synchronize()
            self._stream.begin_capture()
            self._enqueue()
            self._graphs[n] = self._stream.end_capture()
        return self._graphs[n]

    def synchronize(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["timed"] = "compute + host<->device copies (pageable host memory)" + (
            ", CUDA graph" if self.options.get("cuda_graph") else "")
        return out

    def deactivate_impl(self) -> None:
        for g in self._graphs.values():
            g.destroy()
        self._graphs.clear()
        for res in (self._d_in, self._d_out):
            if res is not None:
                res.free()
        if self._stream is not None:
            self._stream.destroy()
        self._stream = self._d_in = self._d_out = None
        # the context before the engine before the runtime: TensorRT's required destruction order
        del self._context, self._engine, self._runtime


__all__ = ["TensorRTBackend"]
