"""What an engine is, on the package side: its sidecar (a versioned pydantic schema), the machine facts an
engine is tied to, the rule that says whether it may run here, where it lives in a run, and which NVIDIA
library flavour builds and runs it.

`build.py` only builds; `runtime/tensorrt_backend.py`, `bench` and `triton` ask this module. The names and
the sidecar dict themselves live in `edgetl.portable.engines`, shared with the device entry point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgetl.choices import EnginePrecisionName
from edgetl.errors import BackendUnavailable, EngineMismatch, RunDirError, first_line
from edgetl.io import read_json
from edgetl.portable.engines import (ENGINE_PRECISIONS, LIBRARIES, SIDECAR_FORMAT, engine_dir_name,
                                     engine_mismatch, plan_name, sidecar_for)
from edgetl.portable import cuda
from edgetl.portable.jetson import l4t_release
from edgetl.portable.trtexec import tensorrt_unsupported

Library = Literal["tensorrt", "tensorrt_rtx"]
REBUILD_HINT = "rebuild it here with `edgetl build`"


class Sidecar(BaseModel):
    """The JSON next to every engine (model.<precision>.json); written by `edgetl build` and the device."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["edgetl-engine/2"]
    library: Library
    library_version: str
    gpu_name: str | None
    compute_capability: str | None
    target_compute_capabilities: list[str]
    cuda_driver: str | None
    l4t_release: str | None
    precision: EnginePrecisionName  # edgetl.portable.forms.PRECISIONS
    profile: dict[str, Any]
    workspace_mib: int | None
    builder_optimization_level: int | None
    version_compatible: bool
    dla_core: int | None
    source_onnx: str
    source_onnx_sha256: str
    engine_sha256: str
    build_seconds: float | None
    built_at: str
    builder: str
    trtexec: str | None
    edgetl_version: str
    card: dict[str, Any] | None


# -- the library flavour --------------------------------------------------------------------------------
def import_flavour(library: str = "tensorrt"):
    """The module of an NVIDIA builder flavour (`tensorrt` 10+ or `tensorrt_rtx`), or BackendUnavailable."""
    if library == "tensorrt_rtx":
        try:
            import tensorrt_rtx as trt
        except ImportError:
            raise BackendUnavailable("TensorRT for RTX is not installed here (`import tensorrt_rtx` fails)",
                                     "pip install 'edgetl[rtx]' (x86-64 Linux or Windows)") from None
        except Exception as e:  # installed but broken (a missing shared library, a bad build): say so, go on
            raise BackendUnavailable(f"TensorRT for RTX is installed but does not import ({type(e).__name__}: "
                                     f"{first_line(e)})", "reinstall it: pip install --force-reinstall "
                                     "'edgetl[rtx]'") from None
        return trt
    if library != "tensorrt":
        raise BackendUnavailable(f"unknown engine library '{library}'", f"use one of {', '.join(LIBRARIES)}")
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed here (`import tensorrt` fails)",
                                 "build engines on the target: a Jetson has it with JetPack; on x86 "
                                 "`pip install tensorrt` from NVIDIA's index") from None
    except Exception as e:
        raise BackendUnavailable(f"TensorRT is installed but does not import ({type(e).__name__}: {first_line(e)})",
                                 "reinstall TensorRT (on a Jetson: sudo apt install --reinstall "
                                 "python3-libnvinfer)") from None
    too_old = tensorrt_unsupported(trt.__version__)  # the one supported range, shared with the device
    if too_old:
        raise BackendUnavailable(too_old, "upgrade TensorRT (JetPack 6 ships 10.x)")
    return trt



def machine_facts(library: str = "tensorrt", trt=None) -> dict[str, Any]:
    """What an engine is tied to on this machine: the library and its version, the GPU and its compute
    capability (BackendUnavailable without a GPU), the CUDA driver and, on a Jetson, the L4T release."""
    trt = trt or import_flavour(library)
    try:
        gpu = cuda.gpu_facts()
    except cuda.CudaUnavailable as e:
        raise BackendUnavailable(str(e), "TensorRT engines build and run on an NVIDIA GPU") from None
    return {"library": library, "library_version": str(trt.__version__), **gpu, "l4t_release": l4t_release()}


_LOGGERS: dict[str, Any] = {}


def capturing_logger(trt):
    """The trt.ILogger that keeps every message, so a failure can say the library's own reason, emptied for
    the caller. One per library and process: TensorRT (and TensorRT-RTX) keep the first logger a builder or
    runtime was given and ignore later ones ("The logger passed into createInferBuilder differs from one
    already registered"), so a second logger object would silently capture nothing."""
    key = getattr(trt, "__name__", str(id(trt)))
    logger = _LOGGERS.get(key)
    if logger is None:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[tuple[Any, str]] = []

            def log(self, severity, msg):
                self.messages.append((severity, msg))

            def lines(self, worst_first: bool = True) -> list[str]:
                bad = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
                errors = [m for s, m in self.messages if s in bad]
                return errors + self.warnings() if worst_first else [m for _, m in self.messages]

            def warnings(self) -> list[str]:
                return [m for s, m in self.messages if s == trt.ILogger.Severity.WARNING]

        logger = _LOGGERS[key] = _Logger()
    logger.messages = []
    return logger


_PLUGINS_READY: set[str] = set()


def init_plugins(trt, logger) -> None:
    """Register the library's own plugins once per process, before a parser or runtime needs them (a graph
    or engine with plugin layers cannot be read without); a library without the call is left alone."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    name = getattr(trt, "__name__", "trt")
    if init is not None and name not in _PLUGINS_READY:
        init(logger, "")
        _PLUGINS_READY.add(name)


# -- where engines live ----------------------------------------------------------------------------------
def engine_dir(run, target: str, library: str, version: str) -> Path:
    return run.engines_dir / engine_dir_name(target, library, version)


def engine_file(run, facts: dict[str, Any], precision: str) -> Path:
    """The plan this machine (facts) builds for a precision."""
    return engine_dir(run, facts["gpu_name"], facts["library"], facts["library_version"]) / plan_name(precision)


def sidecar_path(plan: str | os.PathLike) -> Path:
    return Path(sidecar_for(str(plan)))


def rtx_target(compute_capabilities) -> str:
    """The folder target of a TensorRT-RTX engine: the compute capabilities it runs on ('sm86-sm89-sm120'),
    since an ahead-of-time build may have no GPU to name."""
    return "-".join("sm" + str(cc).replace(".", "") for cc in compute_capabilities)


def describe_engine(sidecar: dict[str, Any]) -> str:
    """What an engine is for, in words: 'TensorRT-RTX 1.7.1.116 engine for RTX GPUs of compute capability
    8.6, 8.9, 12.0' or 'TensorRT 10.3.0.30 engine for Orin (sm 8.7)'."""
    version = sidecar.get("library_version")
    if sidecar.get("library") == "tensorrt_rtx":
        ccs = ", ".join(sidecar.get("target_compute_capabilities") or []) or "?"
        return f"TensorRT-RTX {version} engine for RTX GPUs of compute capability {ccs}"
    return f"TensorRT {version} engine for {sidecar.get('gpu_name')} (sm {sidecar.get('compute_capability')})"


def facts_for_engine(plan: str | os.PathLike, sidecar: dict[str, Any], trt=None) -> dict[str, Any]:
    """This machine's facts for the engine's library, or one line saying what the engine is for and what
    this machine is (e.g. an RTX engine on a machine without a GPU)."""
    try:
        return machine_facts(sidecar["library"], trt)
    except BackendUnavailable as e:
        raise BackendUnavailable(f"{plan}: a {describe_engine(sidecar)}; this machine: {e.message}",
                                 e.hint) from None


def facts_here(libraries=tuple(LIBRARIES)) -> tuple[dict[str, dict[str, Any]], dict[str, BackendUnavailable]]:
    """Machine facts per engine library that can run here, and why the others cannot."""
    here, missing = {}, {}
    for lib in libraries:
        try:
            here[lib] = machine_facts(lib)
        except BackendUnavailable as e:
            missing[lib] = e
    return here, missing


def find_engine(run, precision: str = "fp32", facts: dict[str, Any] | None = None,
                library: str | None = None) -> Path:
    """The run's engine of a precision that may run on this machine: the one built here first, else any
    whose sidecar passes the mismatch rule (a version-compatible engine built by an earlier TensorRT, an RTX
    engine built ahead of time for this GPU's compute capability); else one clear error saying why not.

    `facts` (this machine) decides the library; without it every library installed here (or `library`) is
    asked, so an RTX engine is found where only TensorRT-RTX is installed."""
    run.require(hint="give the folder that `edgetl finetune --out` wrote")
    if facts is not None:
        here, missing = {facts["library"]: facts}, {}
    else:
        here, missing = facts_here([library] if library else list(LIBRARIES))
    own = None
    for f in here.values():
        if f["library"] == "tensorrt":  # an RTX engine's folder names compute capabilities, not this GPU
            own = engine_file(run, f, precision)
            if own.exists():
                return own
    candidates = sorted(run.engines_dir.glob(f"*/{plan_name(precision)}"))
    if not here and not candidates:
        raise next(iter(missing.values()))  # nothing built, nothing to run it with: say what is missing
    reasons = []
    for plan in candidates:
        try:
            sidecar = read_sidecar(plan)
        except EngineMismatch as e:
            reasons.append(f"{plan.parent.name} ({first_line(e)})")
            continue
        lib = sidecar["library"]
        if lib in here:
            why = engine_mismatch(sidecar, here[lib])
        elif lib in missing:
            why = f"a {describe_engine(sidecar)}; {missing[lib].message}"
        else:
            why = f"built with {lib}, asked for {', '.join(here) or library}"
        if why is None:
            return plan
        reasons.append(f"{plan.parent.name} ({why})")
    build_hint = f"run `edgetl build {run.path} --precision {precision}` here"
    if reasons:
        raise EngineMismatch(f"{run.path}: no {precision} engine of this run can run here: {'; '.join(reasons)}",
                             build_hint)
    where = own.parent.name if own is not None else "this machine"
    raise RunDirError(f"{run.path}: no {precision} engine for this machine ({where})", build_hint)


# -- the sidecar and the load-time check ------------------------------------------------------------
def read_sidecar(plan: str | os.PathLike) -> dict[str, Any]:
    """The validated sidecar of a plan (a dict with every key of `Sidecar`), or EngineMismatch (one line)."""
    path = sidecar_path(plan)
    if not path.exists():
        raise EngineMismatch(f"{plan}: has no sidecar {path.name}, so edgetl did not build it (or it was renamed)",
                             f"edgetl loads only engines it built: {REBUILD_HINT}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise EngineMismatch(f"{path}: unreadable engine sidecar ({first_line(e)})", REBUILD_HINT) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise EngineMismatch(f"{path}: not an edgetl engine sidecar of format {SIDECAR_FORMAT}"
                             + (f" (it says {found})" if found else ""), REBUILD_HINT)
    try:
        return Sidecar.model_validate(data).model_dump(mode="json")
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "sidecar"
        raise EngineMismatch(f"{path}: invalid engine sidecar: {where}: {err.get('msg')}", REBUILD_HINT) from None


def check_engine(plan: str | os.PathLike, sidecar: dict[str, Any], facts: dict[str, Any],
                 engine_sha256: str | None = None) -> None:
    """Refuse (EngineMismatch, one line) an engine for another machine, or one whose bytes changed."""
    reason = engine_mismatch(sidecar, facts)
    if reason:
        raise EngineMismatch(f"{plan}: {reason}", REBUILD_HINT)
    if engine_sha256 is not None and engine_sha256 != sidecar.get("engine_sha256"):
        raise EngineMismatch(f"{plan}: its SHA-256 differs from the one edgetl recorded when it built it",
                             f"edgetl loads only engines it built: {REBUILD_HINT}")


__all__ = ["ENGINE_PRECISIONS", "REBUILD_HINT", "SIDECAR_FORMAT", "Sidecar", "capturing_logger", "check_engine",
           "describe_engine", "engine_dir", "engine_file", "engine_mismatch", "facts_for_engine", "find_engine",
           "import_flavour", "init_plugins", "machine_facts", "read_sidecar", "rtx_target",
           "sidecar_path"]
