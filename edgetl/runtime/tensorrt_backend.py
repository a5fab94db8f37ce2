"""A TensorRT or TensorRT-RTX engine that `edgetl build` wrote: sidecar checked, I/O on the GPU, CUDA graph
as an option. The sidecar names the library, so the same code runs both flavours.

GPU memory, copies and graphs go through the one ctypes CUDA layer (edgetl.portable.cuda), whose CudaError
becomes an EdgetlError line here. Input and output buffers are
allocated once, sized from the engine's own shapes at the profile's largest batch; infer() copies the host
batch in, enqueues the engine (or replays the CUDA graph captured for the current batch size) and copies the
output out, so what a timed infer() measures is "compute + host<->device copies".
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError, EngineMismatch, RunDirError
from edgetl.portable import cuda
from edgetl.runtime.base import Backend
from edgetl.runtime.registry import register_backend


@register_backend
class TensorRTBackend(Backend):
    """Options: `cuda_graph` (replay one CUDA graph per batch size)."""

    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32", "fp16", "int8")
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
        from edgetl.tensorrt.engine import (capturing_logger, check_engine, facts_for_engine, import_flavour, init_plugins,
                                   read_sidecar)
        from edgetl.io import sha256_file

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

        self._trt = trt
        self._logger = capturing_logger(trt)
        init_plugins(trt, self._logger)
        self._graph: tuple[int, Any] | None = None
        self._stream = self._d_in = self._d_out = None
        self._context = self._engine = None
        self._runtime = trt.Runtime(self._logger)
        if sidecar.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # the lean runtime ships inside the plan
        if sidecar.get("dla_core") is not None:
            self._runtime.DLA_core = int(sidecar["dla_core"])
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            raise EngineMismatch(f"{self.model_path}: {trt.__name__} {trt.__version__} refused to load it: "
                                 f"{self._said()}", "rebuild it here with `edgetl build`")
        self._engine = engine
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
        context = engine.create_execution_context()
        if context is None:  # e.g. not enough GPU memory for the engine's activations
            raise EdgetlError(f"{self.model_path}: {trt.__name__} could not create an execution context: "
                              f"{self._said()}", "free GPU memory, or rebuild with a smaller batch maximum (`edgetl build --batch`)")
        self._context = context
        # the output buffer holds the engine's output at the profile's largest input, whatever the card says
        self._set_shape(tuple(int(d) for d in hi))
        out_max = tuple(int(d) for d in context.get_tensor_shape(self._out))
        if any(d < 0 for d in out_max):
            raise EngineMismatch(f"{self.model_path}: output {self._out} has no fixed shape at batch "
                                 f"{self.max_batch} ({out_max}); edgetl engines output one row per image")
        try:  # a failure half-way must not leak the stream or GPU memory already taken
            with cuda_errors(self.model_path):
                self._stream = cuda.Stream()
                self._d_in = cuda.DeviceBuffer(int(np.prod(tuple(hi))) * self._in_dtype.itemsize)
                self._d_out = cuda.DeviceBuffer(int(np.prod(out_max)) * self._out_dtype.itemsize)
            for name, buf in ((self._in, self._d_in), (self._out, self._d_out)):
                if not context.set_tensor_address(name, int(buf.ptr)):
                    raise EdgetlError(f"{self.model_path}: {trt.__name__} refused the GPU address of {name}: "
                                      f"{self._said()}")
        except BaseException:
            self.deactivate_impl()
            raise
        self.sidecar = sidecar
        return card

    def _said(self) -> str:
        return " | ".join(self._logger.lines()[:3]) or "no reason logged"

    def _set_shape(self, shape: tuple) -> None:
        if not self._context.set_input_shape(self._in, shape):
            raise EdgetlError(f"{self.model_path.name}: the engine refused input shape {shape}: {self._said()}")
        self._shape = shape

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if not self.min_batch <= n <= self.max_batch:
            raise EdgetlError(f"{self.model_path.name}: batch {n} is outside the engine's profile "
                              f"{self.min_batch}..{self.max_batch}", "rebuild with `edgetl build --batch MIN,OPT,MAX`")
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        if self._shape != x.shape:
            self._set_shape(x.shape)
        out = np.empty(tuple(self._context.get_tensor_shape(self._out)), dtype=self._out_dtype)
        with cuda_errors(self.model_path):
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
            raise EdgetlError(f"{self.model_path.name}: TensorRT enqueue failed: {self._said()}")

    def _graph_for(self, n: int):
        """The CUDA graph of one enqueue at batch n. One context serves every batch size, and a graph bakes in
        the context's shape-dependent state, so a new batch size replaces the graph (captured again) rather
        than keeping one per size. Captured after a plain run: TensorRT's advice, as the first enqueue after a
        shape change may do work that cannot be captured."""
        if self._graph is not None and self._graph[0] == n:
            return self._graph[1]
        self._drop_graph()
        capturable = getattr(self._context, "is_stream_capturable", None)  # TensorRT-RTX says so up front
        if capturable is not None and not capturable(self._stream.handle_int):
            raise EdgetlError(f"{self.model_path.name}: this engine cannot be captured in a CUDA graph here",
                              "run without cuda_graph")
        self._enqueue()
        self._stream.synchronize()
        self._graph = (n, self._stream.capture(self._enqueue))
        return self._graph[1]

    def _drop_graph(self) -> None:
        if getattr(self, "_graph", None) is not None:
            self._graph[1].destroy()
        self._graph = None

    def synchronize(self) -> None:
        if getattr(self, "_stream", None) is not None:
            with cuda_errors(self.model_path):
                self._stream.synchronize()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["timed"] = "compute + host<->device copies (pageable host memory)" + (
            ", CUDA graph" if self.options.get("cuda_graph") else "")
        return out

    def deactivate_impl(self) -> None:
        with cuda_errors(self.model_path):
            self._drop_graph()
            for res in (self._d_in, self._d_out):
                if res is not None:
                    res.free()
            if self._stream is not None:
                self._stream.destroy()
        self._stream = self._d_in = self._d_out = None
        # the context before the engine before the runtime: TensorRT's required destruction order
        self._context = None
        self._engine = None
        self._runtime = None


@contextmanager
def cuda_errors(model: Path | None) -> Iterator[None]:
    """A failed CUDA call as one EdgetlError line naming the engine (the layer itself knows no edgetl)."""
    try:
        yield
    except (cuda.CudaError, cuda.CudaUnavailable) as e:
        raise EdgetlError(f"{model}: {e}", "is a CUDA GPU visible here (nvidia-smi / tegrastats)?") from None


__all__ = ["TensorRTBackend"]
