"""The machine a bench ran on: CPU, GPU, driver, library versions; on a Jetson the L4T release, power mode and
clocks (the same facts, in the same units, as the device entry point records)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def system_info() -> dict[str, Any]:
    """CPU, GPU, driver, library versions; on a Jetson the L4T release, power mode and clocks."""
    from importlib import metadata

    from edgetl.portable import jetson
    from edgetl.portable.jetson import l4t_release

    info: dict[str, Any] = {"hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
                            "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    libs = {}
    for name in ("edgetl", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "timm", "numpy", "tensorrt",
                 "tensorrt-rtx-cu12"):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["libraries"] = libs
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["cuda_runtime"] = torch.version.cuda
    except Exception:  # a broken CUDA install must not stop a CPU bench
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        name, _, driver = smi.splitlines()[0].partition(",")
        info.setdefault("gpu", name.strip())
        info["driver"] = driver.strip()
    l4t = l4t_release()
    if l4t:  # the same facts, in the same units (clocks in MHz), as the device entry point records
        info["l4t_release"] = l4t
        info["model"] = jetson.board_model()
        info["power_mode"] = jetson.power_mode()
        info["clocks"] = jetson.clocks()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # e.g. nvidia-smi without a driver prints its complaint on stdout
        return None
    return out.stdout.strip() or None
