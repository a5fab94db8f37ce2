"""The two runtimes that produce the numbers, one copy for both sides: ONNX Runtime (with its provider rule)
and a TensorRT engine over the CUDA layer (cuda.py). `edgetl bench` wraps them as backends
(edgetl/runtime/*.py); the device script calls them directly.

A failure is a RunnerError: `kind` says which step refused, the text what was said, without a file name
or an edgetl hint (each side adds its own). CUDA failures stay cuda.CudaError / CudaUnavailable.
tensorrt and onnxruntime are imported only when a runner is made: the device may have either alone.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from . import cuda

ORT_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
                 "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class RunnerError(Exception):
    """kind: missing (runtime not installed), device, provider, load, io, context, output, shape, address, enqueue,
    capture."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


def first_line(e: BaseException) -> str:
    """An exception as one short line (library errors carry pages of context, or no text at all)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def ort_device(device: str, available: List[str]) -> str:
    """The provider family `device` asks for: 'auto' is CUDA where this onnxruntime has it, else the CPU."""
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in available else "cpu"
    return device.split(":")[0]


def ort_missing(device: str, available: List[str]) -> Optional[str]:
    """Why onnxruntime with `available` providers cannot run on `device`; None when it can."""
    wanted = ORT_PROVIDERS.get(ort_device(device, available))
    if wanted is None:
        return f"unknown device '{device}' (use one of {', '.join(ORT_PROVIDERS)})"
    if wanted[0] not in available:
        return f"{wanted[0]} is not available in this onnxruntime build (it has {', '.join(available)})"
    return None


class OrtRunner:
    """An InferenceSession on a model file (path) or its bytes; `runner(x)` -> the first output."""

    def __init__(self, model, device: str, threads: Optional[int] = None, exact: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError("missing", "onnxruntime is not installed") from None
        available = list(ort.get_available_providers())
        missing = ort_missing(device, available)
        if missing:
            raise RunnerError("provider", missing)
        self.device = ort_device(device, available)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        if exact:  # a Q/DQ graph runs as the arithmetic it defines, not through fused int8 kernels
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=ORT_PROVIDERS[self.device])
        except Exception as e:  # onnxruntime's own exception types: not a model it can run
            raise RunnerError("load", f"onnxruntime cannot load it ({first_line(e)})") from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        batch = graph_input.shape[0] if graph_input.shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None  # a symbolic dim is a str
        self.provider = self.session.get_providers()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


def _no_reason() -> str:
    return "no reason logged"


class TrtRunner:
    """One engine with one input and one output: buffers on the GPU sized once at the profile's largest batch;
    a call copies the host batch in, enqueues (or replays the CUDA graph of this batch size), copies out and
    synchronises, so a timed call is "compute + host<->device copies".

    `trt`: the library module (tensorrt or tensorrt_rtx; imported here when None); `logger` and `said` (its
    last words, for messages) come from the caller, since TensorRT keeps the first logger of a process."""

    def __init__(self, plan: bytes, trt=None, logger=None, said: Callable[[], str] = _no_reason,
                 host_code: bool = False, dla_core: Optional[int] = None):
        if trt is None:
            trt = _import_tensorrt()
        self.trt, self.said = trt, said
        self.graph = None
        self.stream = self.d_in = self.d_out = None
        self.context = self.engine = None
        self.runtime = trt.Runtime(logger if logger is not None else trt.Logger(trt.Logger.WARNING))
        if host_code:
            self.runtime.engine_host_code_allowed = True  # a version-compatible plan carries its lean runtime
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RunnerError("load", f"{trt.__name__} {trt.__version__} refused to load it: {said()}")
        self._find_io()
        self.context = self.engine.create_execution_context()
        if self.context is None:  # e.g. not enough GPU memory for the engine's activations
            raise RunnerError("context", f"{trt.__name__} could not create an execution context: {said()}")
        self._allocate()

    def _find_io(self) -> None:
        engine, trt = self.engine, self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RunnerError("io", f"has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
        self.input, self.output = inputs[0], outputs[0]
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output)))
        first = int(tuple(engine.get_tensor_shape(self.input))[0])
        # a static-batch engine (trtexec without shapes) has no profile to ask
        self.fixed_batch = first if first > 0 else None
        if self.fixed_batch:
            self.min_batch = self.max_batch = first
            self.sample = tuple(int(d) for d in tuple(engine.get_tensor_shape(self.input))[1:])
        else:
            lo, _opt, hi = engine.get_tensor_profile_shape(self.input, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
            self.sample = tuple(int(d) for d in tuple(hi)[1:])

    def _allocate(self) -> None:
        # the output buffer holds the engine's output at the largest input, whatever the caller expects
        self.set_shape((self.max_batch, *self.sample))
        out_max = tuple(int(d) for d in self.context.get_tensor_shape(self.output))
        if any(d < 0 for d in out_max):
            raise RunnerError("output", f"output {self.output} has no fixed shape at batch {self.max_batch} "
                                        f"({out_max}); edgetl engines output one row per image")
        try:  # a failure half-way must not leak the stream or GPU memory already taken
            self.stream = cuda.Stream()
            self.d_in = cuda.DeviceBuffer(self.max_batch * int(np.prod(self.sample)) * self.in_dtype.itemsize)
            self.d_out = cuda.DeviceBuffer(int(np.prod(out_max)) * self.out_dtype.itemsize)
            for name, buf in ((self.input, self.d_in), (self.output, self.d_out)):
                if not self.context.set_tensor_address(name, int(buf.ptr)):
                    raise RunnerError("address", f"{self.trt.__name__} refused the GPU address of {name}: "
                                                 f"{self.said()}")
        except BaseException:
            self.close()
            raise

    def set_shape(self, shape: tuple) -> None:
        if not self.context.set_input_shape(self.input, shape):
            raise RunnerError("shape", f"the engine refused input shape {shape}: {self.said()}")
        self.shape = shape

    def __call__(self, x: np.ndarray, graph: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        if getattr(self, "shape", None) != x.shape:
            self.set_shape(x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype)
        self.stream.upload(self.d_in, x)
        if graph:
            self._graph_for(len(x)).launch(self.stream)
        else:
            self.enqueue()
        self.stream.download(out, self.d_out)
        self.stream.synchronize()
        return out

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle_int):
            raise RunnerError("enqueue", f"TensorRT enqueue failed: {self.said()}")

    def _graph_for(self, n: int):
        """The CUDA graph of one enqueue at batch n. One context serves every batch size and a graph bakes in
        its shape-dependent state, so a new batch size replaces the graph. Captured after a plain run
        (TensorRT's advice: the first enqueue after a shape change may do work that cannot be captured)."""
        if self.graph is not None and self.graph[0] == n:
            return self.graph[1]
        self.drop_graph()
        capturable = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX says so up front
        if capturable is not None and not capturable(self.stream.handle_int):
            raise RunnerError("capture", "this engine cannot be captured in a CUDA graph here")
        self.enqueue()
        self.stream.synchronize()
        self.graph = (n, self.stream.capture(self.enqueue))
        return self.graph[1]

    def drop_graph(self) -> None:
        if self.graph is not None:
            self.graph[1].destroy()
        self.graph = None

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def close(self) -> None:
        try:
            self.drop_graph()
            for res in (self.d_in, self.d_out):
                if res is not None:
                    res.free()
            if self.stream is not None:
                self.stream.destroy()
        finally:
            self.stream = self.d_in = self.d_out = None
            # the context before the engine before the runtime: TensorRT's required destruction order
            self.context = None
            self.engine = None
            self.runtime = None


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RunnerError("missing", "TensorRT's Python API is not installed (sudo apt install python3-libnvinfer)") from None
    return trt
