"""The one CUDA layer: the CUDA runtime (libcudart) through ctypes, for the package and the device alike.

ctypes rather than NVIDIA's Python bindings package (as Polygraphy's `polygraphy/cuda/cuda.py` does): libcudart
ships with JetPack, with the CUDA toolkit and as the CUDA runtime wheel that TensorRT's (and edgetl's rtx extra)
pull in, while the bindings of CUDA 12 are one more install whose files collide with the CUDA 13 bindings that
torch requires (pip does not notice two distributions writing the same file). The TensorRT path needs only a few
calls: device facts, memory, a stream, copies and CUDA graphs.

Finding no GPU is an answer, not an exception: `why_no_gpu()` turns every way CUDA can be missing or broken
(no libcudart, a library that does not load, no driver, a driver older than the runtime, no device, zero
devices, a loader that raises) into one reason string. Where libcudart is looked for, in order: the file
named by $EDGETL_CUDART (alone, when set); a libcudart this process has already loaded (TensorRT, torch);
the system loader (ldconfig, LD_LIBRARY_PATH: JetPack, a CUDA toolkit); /usr/local/cuda; the CUDA runtime
wheels under site-packages (nvidia/cuda_runtime for CUDA 12, nvidia/cu13 for CUDA 13). The first library
that finds a GPU is kept; where none does, the reason from the first one that loaded is given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from typing import Callable, Dict, List, Optional

ENV_VAR = "EDGETL_CUDART"
SONAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
SYSTEM_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
               "/usr/local/cuda/targets/sbsa-linux/lib", "/usr/local/cuda/targets/x86_64-linux/lib")
WHEEL_DIRS = ("nvidia/cuda_runtime/lib", "nvidia/cu13/lib", "nvidia/cu12/lib")
# cudaError_t values that mean "no usable GPU here" rather than a bug; their names come from the library
# itself where it has cudaGetErrorName, these are for the words around them
NO_GPU_ERRORS = {35: "the NVIDIA driver is missing or older than this CUDA runtime",
                 100: "no CUDA GPU is visible", 999: "CUDA failed to initialise"}
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor: stable across CUDA versions
H2D, D2H = 1, 2  # cudaMemcpyKind
CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal


class CudaUnavailable(Exception):
    """No usable CUDA GPU here; str(e) is the reason in one line."""


class CudaError(Exception):
    """A CUDA call failed on a machine that has a GPU; str(e) names the call and CUDA's error."""


def candidates() -> List[str]:
    """Where libcudart is looked for, in order (see the module docstring)."""
    named = os.environ.get(ENV_VAR)
    if named:
        return [named]
    found: List[str] = []
    found += _loaded_in_process()
    found += list(SONAMES)
    lib = ctypes.util.find_library("cudart")
    if lib:
        found.append(lib)
    for d in SYSTEM_DIRS:
        found += sorted(glob.glob(os.path.join(d, "libcudart.so*")))
    for root in sys.path:
        for d in WHEEL_DIRS:
            found += sorted(glob.glob(os.path.join(root or ".", d, "libcudart.so*")))
    seen, out = set(), []
    for c in found:
        if c not in seen and not c.endswith((".a", ".py")):
            seen.add(c)
            out.append(c)
    return out


def _loaded_in_process() -> List[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "libcudart" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in os.path.basename(p))


class Runtime:
    """libcudart, loaded and checked: `Runtime.probe()` returns one that found a GPU, or raises
    CudaUnavailable with the reason. Every call returns a cudaError_t; `check` raises CudaError on a failure."""

    def __init__(self, lib, path: str):
        self.lib, self.path = lib, path
        v = ctypes.c_int(0)
        self.runtime_version = (f"{v.value // 1000}.{v.value % 1000 // 10}"
                                if _call(lib, "cudaRuntimeGetVersion", ctypes.byref(v)) == 0 and v.value else None)

    @classmethod
    def probe(cls, paths: Optional[List[str]] = None, dlopen: Callable = ctypes.CDLL) -> "Runtime":
        first_reason = None
        tried = []
        for path in paths if paths is not None else candidates():
            try:
                lib = dlopen(path)
            except Exception as e:  # OSError for a missing or broken file; a wrapped loader may raise anything
                if os.path.sep in path or os.environ.get(ENV_VAR):  # a plain soname not on the path says nothing
                    why = _first_line(e)
                    tried.append(f"{path} ({why[len(path) + 2:] if why.startswith(path + ': ') else why})")
                continue
            try:
                rt = cls(lib, path)
                rt.device_count()
                return rt
            except (CudaUnavailable, CudaError) as e:
                first_reason = first_reason or str(e)
            except Exception as e:  # a library without the symbols, a loader that raises on first call
                first_reason = first_reason or f"{path}: not a usable CUDA runtime ({type(e).__name__}: {_first_line(e)})"
        if first_reason:
            raise CudaUnavailable(first_reason)
        where = "; ".join(tried) if tried else f"${ENV_VAR}, the system loader, /usr/local/cuda, CUDA runtime wheels"
        raise CudaUnavailable(f"no CUDA runtime (libcudart) could be loaded (looked in: {where})")

    # -- checked calls ----------------------------------------------------------------------------
    def error_name(self, code: int) -> str:
        fn = getattr(self.lib, "cudaGetErrorName", None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            try:
                name = fn(ctypes.c_int(code))
                if name:
                    return name.decode(errors="replace")
            except Exception:
                pass
        return f"cudaError {code}"

    def check(self, code: int, what: str) -> None:
        if code != 0:
            raise CudaError(f"CUDA {what} failed: {self.error_name(code)}")

    def call(self, name: str, *args) -> None:
        self.check(_call(self.lib, name, *args), name)

    def device_count(self) -> int:
        """How many GPUs; CudaUnavailable (with CUDA's own error name) when there are none or no driver."""
        count = ctypes.c_int(0)
        code = _call(self.lib, "cudaGetDeviceCount", ctypes.byref(count))
        if code != 0:
            words = NO_GPU_ERRORS.get(code, "CUDA cannot reach a GPU")
            version = f" {self.runtime_version}" if self.runtime_version else ""
            raise CudaUnavailable(f"{words} ({self.error_name(code)} from CUDA runtime{version}, "
                                  f"{os.path.basename(self.path)})")
        if count.value < 1:
            raise CudaUnavailable(f"no CUDA GPU is visible ({os.path.basename(self.path)} counts 0 devices)")
        return count.value

    def facts(self, device: int = 0) -> Dict[str, Optional[str]]:
        """CUDA's own GPU name, compute capability ('8.7') and driver version ('12.2'): the facts an engine's
        sidecar records and the mismatch rule compares (never nvidia-smi's or the board's name)."""
        major, minor, driver = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self.call("cudaDeviceGetAttribute", ctypes.byref(major), ATTR_CC_MAJOR, device)
        self.call("cudaDeviceGetAttribute", ctypes.byref(minor), ATTR_CC_MINOR, device)
        # cudaDeviceProp starts with `char name[256]` in every CUDA version; the buffer is larger than the
        # struct of any version. CUDA 12 renamed the call (_v2) and kept the old symbol for old binaries.
        prop = ctypes.create_string_buffer(16384)
        name = "cudaGetDeviceProperties_v2" if hasattr(self.lib, "cudaGetDeviceProperties_v2") else "cudaGetDeviceProperties"
        self.call(name, prop, device)
        _call(self.lib, "cudaDriverGetVersion", ctypes.byref(driver))
        gpu = prop.raw[:256].split(b"\x00", 1)[0].decode(errors="replace").strip()
        v = driver.value
        return {"gpu_name": gpu or None, "compute_capability": f"{major.value}.{minor.value}",
                "cuda_driver": f"{v // 1000}.{v % 1000 // 10}" if v else None}


def _call(lib, name: str, *args) -> int:
    """A libcudart function by name, with pointer-sized arguments passed as such (ctypes' default int would
    cut a 64-bit device pointer or handle)."""
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    return int(fn(*args))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_LOCK = threading.Lock()
_CACHED: Dict[str, object] = {}


def runtime() -> Runtime:
    """The process's libcudart (probed once per $EDGETL_CUDART value), or CudaUnavailable with the reason."""
    key = os.environ.get(ENV_VAR, "")
    with _LOCK:
        if key not in _CACHED:
            try:
                _CACHED[key] = Runtime.probe()
            except CudaUnavailable as e:
                _CACHED[key] = e
        found = _CACHED[key]
    if isinstance(found, CudaUnavailable):
        raise CudaUnavailable(str(found))
    return found  # type: ignore[return-value]


def why_no_gpu() -> Optional[str]:
    """None where a CUDA GPU is usable here, else the reason in one line. Never raises."""
    try:
        runtime()
        return None
    except CudaUnavailable as e:
        return str(e)
    except Exception as e:  # the promise of this function: an answer, whatever went wrong
        return f"CUDA could not be checked ({type(e).__name__}: {_first_line(e)})"


def gpu_facts(device: int = 0) -> Dict[str, Optional[str]]:
    """The GPU's facts (see Runtime.facts); CudaUnavailable with the reason where there is none."""
    try:
        return runtime().facts(device)
    except CudaError as e:
        raise CudaUnavailable(str(e)) from None


# -- memory, streams, graphs (what the TensorRT runners use) ----------------------------------------------
class DeviceBuffer:
    """A cudaMalloc'd block of `nbytes`, freed by free()."""

    def __init__(self, nbytes: int, rt: Optional[Runtime] = None):
        self.rt = rt or runtime()
        self.nbytes = int(nbytes)
        ptr = ctypes.c_void_p()
        self.rt.call("cudaMalloc", ctypes.byref(ptr), ctypes.c_size_t(max(self.nbytes, 1)))
        self.ptr: Optional[int] = ptr.value

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.rt.call("cudaFree", ctypes.c_void_p(ptr))


class Stream:
    """A CUDA stream: async copies in and out, synchronize, and capture into a CUDA graph."""

    def __init__(self, rt: Optional[Runtime] = None):
        self.rt = rt or runtime()
        handle = ctypes.c_void_p()
        self.rt.call("cudaStreamCreate", ctypes.byref(handle))
        self.handle: Optional[ctypes.c_void_p] = handle

    @property
    def handle_int(self) -> int:
        """The stream as the integer handle TensorRT's execute_async_v3 takes."""
        return int(self.handle.value or 0)

    def upload(self, dst: DeviceBuffer, host) -> None:
        """Copy a C-contiguous numpy array to the device (queued on this stream)."""
        self._copy(dst.ptr, host.ctypes.data, host.nbytes, H2D)

    def download(self, host, src: DeviceBuffer) -> None:
        self._copy(host.ctypes.data, src.ptr, host.nbytes, D2H)

    def _copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self.rt.call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                     ctypes.c_int(kind), self.handle)

    def synchronize(self) -> None:
        self.rt.call("cudaStreamSynchronize", self.handle)

    def capture(self, work: Callable[[], None]) -> "Graph":
        """The CUDA graph of what `work()` enqueues on this stream. Thread-local capture, as trtexec does: only
        this thread's CUDA calls are forbidden meanwhile. If `work` fails, the capture is ended (its partial
        graph destroyed) before the error goes on: a stream left capturing would fail every later call."""
        self.rt.call("cudaStreamBeginCapture", self.handle, ctypes.c_int(CAPTURE_THREAD_LOCAL))
        graph = ctypes.c_void_p()
        try:
            work()
        except BaseException:
            if _call(self.rt.lib, "cudaStreamEndCapture", self.handle, ctypes.byref(graph)) == 0 and graph.value:
                _call(self.rt.lib, "cudaGraphDestroy", graph)
            raise
        self.rt.call("cudaStreamEndCapture", self.handle, ctypes.byref(graph))
        try:
            return Graph(self.rt, graph)
        except BaseException:
            _call(self.rt.lib, "cudaGraphDestroy", graph)
            raise

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.rt.call("cudaStreamDestroy", handle)


class Graph:
    """A captured CUDA graph, instantiated once and replayed with launch()."""

    def __init__(self, rt: Runtime, graph: ctypes.c_void_p):
        self.rt, self.graph = rt, graph
        self.exec = ctypes.c_void_p()
        # ...WithFlags: the one signature shared by CUDA 11.4 to 13 (cudaGraphInstantiate's changed in 12)
        rt.call("cudaGraphInstantiateWithFlags", ctypes.byref(self.exec), graph, ctypes.c_ulonglong(0))

    def launch(self, stream: Stream) -> None:
        self.rt.call("cudaGraphLaunch", self.exec, stream.handle)

    def destroy(self) -> None:
        self.rt.call("cudaGraphExecDestroy", self.exec)
        self.rt.call("cudaGraphDestroy", self.graph)
