"""What both sides agree an engine is: its file and folder names, its sidecar dict, and when it may run.

An engine only runs on the NVIDIA library (TensorRT, or TensorRT for RTX) and the GPU that built it, so
engines live in RUN/engines/<target>-<library tag><version>/model.<precision>.plan, each with a JSON sidecar
(model.<precision>.json) saying what it was built for. The package validates that dict with a pydantic
model (edgetl.tensorrt.engine.Sidecar); the device writes it through `make_sidecar` here, so the two cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

from .forms import PRECISIONS

SIDECAR_FORMAT = "edgetl-engine/2"
LIBRARIES = {"tensorrt": "trt", "tensorrt_rtx": "trtrtx"}  # library -> folder tag
ENGINE_PRECISIONS = PRECISIONS  # the name engine.py and the device script import


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe in a path on every OS)."""
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-.") or "unknown"


def engine_dir_name(target: str, library: str, version: str) -> str:
    """Folder of the engines for one target (a GPU name, or RTX compute capabilities) and library version."""
    return f"{slug(target)}-{LIBRARIES[library]}{slug(version)}"


def plan_name(precision: str) -> str:
    return f"model.{precision}.plan"


def sidecar_name(precision: str) -> str:
    return f"model.{precision}.json"


def sidecar_for(plan_path: str) -> str:
    """The sidecar path of a plan path (a string, so the device side needs no pathlib conventions)."""
    return re.sub(r"\.plan$", "", str(plan_path)) + ".json"


def make_sidecar(*, library: str, library_version: str, gpu_name: str | None, compute_capability: str | None,
                 precision: str, profile: dict[str, Any], source_onnx: str, source_onnx_sha256: str,
                 engine_sha256: str, builder: str, edgetl_version: str, card: dict[str, Any] | None,
                 built_at: str, build_seconds: float | None = None, target_compute_capabilities: list[str] | None = None,
                 cuda_driver: str | None = None, l4t_release: str | None = None, workspace_mib: int | None = None,
                 builder_optimization_level: int | None = None, version_compatible: bool = False,
                 dla_core: int | None = None, trtexec: str | None = None) -> dict[str, Any]:
    """The sidecar dict, every key always present (None where a builder cannot know it).

    `gpu_name`/`compute_capability` are the GPU that built it (None for an ahead-of-time TensorRT-RTX build
    on a machine without one); `target_compute_capabilities` the GPUs it runs on (an RTX build names
    several; a TensorRT build runs on its builder's GPU only). `builder` says who built it:
    'edgetl build' (Python API) or 'trtexec'.
    """
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}")
    targets = list(target_compute_capabilities or ([compute_capability] if compute_capability else []))
    return {
        "format": SIDECAR_FORMAT, "library": library, "library_version": str(library_version),
        "gpu_name": gpu_name, "compute_capability": compute_capability, "target_compute_capabilities": targets,
        "cuda_driver": cuda_driver, "l4t_release": l4t_release, "precision": precision, "profile": profile,
        "workspace_mib": workspace_mib, "builder_optimization_level": builder_optimization_level,
        "version_compatible": bool(version_compatible), "dla_core": dla_core, "source_onnx": source_onnx,
        "source_onnx_sha256": source_onnx_sha256, "engine_sha256": engine_sha256,
        "build_seconds": None if build_seconds is None else round(float(build_seconds), 2), "built_at": built_at,
        "builder": builder, "trtexec": trtexec, "edgetl_version": edgetl_version, "card": card,
    }


def version_tuple(v: Any) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(v).split(".")[:3])
    except ValueError:
        return ()


# TensorRT 11's support matrix lets version-compatible engines built by TensorRT 10 run on an 11 runtime
# (the lean runtime ships inside the plan); any other major change needs a rebuild.
_COMPATIBLE_MAJORS = {10: (10, 11), 11: (11,)}


def engine_mismatch(sidecar: dict[str, Any], facts: dict[str, Any]) -> str | None:
    """Why an engine described by `sidecar` cannot run on a machine with `facts`; None when it can.

    facts: library, library_version, gpu_name, compute_capability (of the machine). The library must be
    the same. A TensorRT engine needs the same GPU (name and compute capability: edgetl builds no
    hardware-compatible engines) and the same TensorRT version, or a later compatible one when built
    version-compatible. A TensorRT-RTX engine needs a GPU whose compute capability it was built for, and
    the same TensorRT-RTX version.
    """
    lib = sidecar.get("library")
    here_lib = facts.get("library")
    built_v, here_v = sidecar.get("library_version"), facts.get("library_version")
    if lib != here_lib:
        return f"built with {lib} {built_v}, this machine runs {here_lib} {here_v}"
    cc = facts.get("compute_capability")
    if lib == "tensorrt_rtx":
        targets = sidecar.get("target_compute_capabilities") or []
        if cc not in targets:
            return (f"built for RTX GPUs of compute capability {', '.join(targets) or '?'}, this GPU "
                    f"({facts.get('gpu_name')}) is {cc}")
        if built_v != here_v:
            return f"built with TensorRT-RTX {built_v}, this is {here_v}"
        return None
    built = f"{sidecar.get('gpu_name')} (sm {sidecar.get('compute_capability')}), TensorRT {built_v}"
    here = f"{facts.get('gpu_name')} (sm {cc}), TensorRT {here_v}"
    gpu_ok = sidecar.get("gpu_name") == facts.get("gpu_name") and sidecar.get("compute_capability") == cc
    trt_ok = built_v == here_v
    if not trt_ok and sidecar.get("version_compatible"):
        b, h = version_tuple(built_v), version_tuple(here_v)
        trt_ok = bool(b and h and h >= b and h[0] in _COMPATIBLE_MAJORS.get(b[0], (b[0],)))
    return None if gpu_ok and trt_ok else f"built for {built}, this is {here}"
