"""What a device is and can run, as the device script reports it (`facts`) and `edgetl deploy` checks it.

Never needs numpy, so it can say that numpy is missing. Every fact is optional: a missing tool is None.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Optional

from . import cuda, jetson

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)  # JetPack installs it off PATH


def run_quiet(argv: list, timeout: float = 20.0) -> Optional[str]:
    """stdout of a command, or None if it is missing or fails (facts are optional)."""
    if shutil.which(argv[0]) is None and not os.path.isfile(argv[0]):
        return None
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def tensorrt_version() -> Optional[str]:
    """TensorRT's version from its Python API, else from the installed package (trtexec-only setups)."""
    try:
        import tensorrt as trt  # JetPack's python3-libnvinfer

        return str(trt.__version__)
    except Exception:
        pass
    for pkg in ("tensorrt", "libnvinfer10", "libnvinfer8"):
        v = run_quiet(["dpkg-query", "-W", "-f=${Version}", pkg])
        if v:
            return v.split("+")[0].split("-")[0]
    return None


def module_version(name: str) -> Optional[str]:
    try:
        module = __import__(name)
        return str(getattr(module, "__version__", "unknown"))
    except Exception:
        return None


def ort_providers() -> Optional[list]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except Exception:
        return None


def find_trtexec() -> Optional[str]:
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if os.path.isfile(p)), None)


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the file system that holds `path` (its nearest existing ancestor), or None."""
    p = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def user() -> Optional[str]:
    """The login name, so results of two accounts on one device are kept apart (RUN/devices/<user@host>/)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no $USER: the name is optional
        return None


def os_name() -> Optional[str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def gpu() -> tuple:
    """(CUDA's gpu_name / compute_capability / cuda_driver of device 0, why there is none or None)."""
    none = {"gpu_name": None, "compute_capability": None, "cuda_driver": None}
    why = cuda.why_no_gpu()
    if why is not None:
        return none, why
    try:
        return cuda.gpu_facts(), None
    except (cuda.CudaUnavailable, cuda.CudaError) as e:  # a GPU that fails its queries is reported, not raised
        return none, str(e)


def facts(space: Optional[str] = None) -> dict:
    """The device's facts document (what `edgetl deploy` stores as facts.json)."""
    jetpack = run_quiet(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    found, no_gpu = gpu()
    return {
        "hostname": platform.node() or None, "user": user(), "model": jetson.board_model(),
        "machine": platform.machine() or None, "os": os_name(), "l4t": jetson.l4t_release(),
        "jetpack": jetpack.split("+")[0].split("-")[0] if jetpack else None,
        "tensorrt": tensorrt_version(), "tensorrt_python": module_version("tensorrt"),
        "gpu": found["gpu_name"], "compute_capability": found["compute_capability"],
        "cuda_driver": found["cuda_driver"], "no_gpu_reason": no_gpu,
        "power_mode": jetson.power_mode(), "clocks": jetson.clocks(),
        "python": platform.python_version(), "python_executable": sys.executable or None,
        "numpy": module_version("numpy"), "onnxruntime": module_version("onnxruntime"),
        "onnxruntime_providers": ort_providers(), "edgetl": module_version("edgetl"),
        "trtexec": find_trtexec(), "free_bytes": None if space is None else free_bytes(space),
    }
