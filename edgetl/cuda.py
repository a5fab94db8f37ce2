"""The little CUDA the TensorRT path needs, through cuda-python's runtime bindings (`cuda.bindings.runtime`,
or `cuda.cudart` in cuda-python < 12.6): device facts, device buffers, a stream, copies, graphs.

cuda-python rather than torch's CUDA tensors because it is what the `tensorrt` extra installs and it works
where torch is a CPU build (a common Jetson setup). Every call returns (error, *values); `check` turns a
non-success error into one EdgetlError line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.errors import BackendUnavailable, EdgetlError


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 12.x before the cuda.bindings layout
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (the TensorRT path uses it for GPU memory)",
                                     "pip install cuda-python") from None
    return runtime


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, *values) tuple; raise on error, return the value(s)."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise EdgetlError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}",
                          "is a CUDA GPU visible here (nvidia-smi / tegrastats)?")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_facts(device: int = 0) -> dict[str, Any]:
    """GPU name, compute capability and driver version of `device`; BackendUnavailable without a GPU."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        raise BackendUnavailable("no CUDA GPU is visible here", "TensorRT engines build and run on an NVIDIA GPU")
    prop = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    driver = check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
    return {"gpu_name": name.strip("\x00 ").strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "cuda_driver": f"{driver // 1000}.{driver % 1000 // 10}"}


class DeviceBuffer:
    """A cudaMalloc'd block of `nbytes`, freed by free()."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc")

    def free(self) -> None:
        if self.ptr is not None:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = None


class Stream:
    def __init__(self):
        self.rt = cudart()
        self.handle = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle_int(self) -> int:
        """The stream as the integer handle TensorRT's execute_async_v3 takes."""
        return int(self.handle)

    def upload(self, dst: DeviceBuffer, host: np.ndarray) -> None:
        check(self.rt.cudaMemcpyAsync(dst.ptr, host.ctypes.data, host.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle), "copy to GPU")

    def download(self, host: np.ndarray, src: DeviceBuffer) -> None:
        check(self.rt.cudaMemcpyAsync(host.ctypes.data, src.ptr, host.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle), "copy to host")

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def begin_capture(self) -> None:
        # thread-local, as trtexec does: only this thread's CUDA calls are forbidden during the capture, so
        # another thread (a second backend, a data loader) cannot invalidate it or be stopped by it
        check(self.rt.cudaStreamBeginCapture(self.handle,
                                             self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")

    def end_capture(self) -> "Graph":
        graph = check(self.rt.cudaStreamEndCapture(self.handle), "cudaStreamEndCapture")
        try:
            return Graph(self.rt, graph)
        except BaseException:
            self.rt.cudaGraphDestroy(graph)
            raise

    def capture(self, work) -> "Graph":
        """The CUDA graph of what `work()` enqueues on this stream. If `work` fails, the capture is ended
        (its partial graph destroyed) before the error goes on: a stream left capturing would make every
        later call on it fail."""
        self.begin_capture()
        try:
            work()
        except BaseException:
            err, graph = self.rt.cudaStreamEndCapture(self.handle)
            if err == self.rt.cudaError_t.cudaSuccess and graph is not None and int(graph):
                self.rt.cudaGraphDestroy(graph)
            raise
        return self.end_capture()

    def destroy(self) -> None:
        if self.handle is not None:
            check(self.rt.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class Graph:
    """A captured CUDA graph, instantiated once and replayed with launch()."""

    def __init__(self, rt, graph):
        self.rt, self.graph = rt, graph
        self.exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, stream: Stream) -> None:
        check(self.rt.cudaGraphLaunch(self.exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        check(self.rt.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
        check(self.rt.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
