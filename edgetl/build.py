"""`edgetl build`: a TensorRT engine from the run's precision-baked ONNX, with a sidecar that says what it is for.

Precision lives in the ONNX graph (Q/DQ for int8, an fp16 body for fp16), so the network is always created
STRONGLY_TYPED (TensorRT 10.x needs the flag; 11.x is always strongly typed and ignores it) and no FP16/INT8
builder flag is ever set. An engine only runs on the TensorRT version and GPU that built it, so engines live
under RUN/engines/<gpu>-trt<version>/ and every load checks the sidecar against the running machine.

Everything that needs no TensorRT (profile, names, sidecar, mismatch check, trtexec line) is a plain
function, tested everywhere; `build()` itself runs only where TensorRT and a GPU are.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgetl import __version__
from edgetl.errors import BackendUnavailable, EdgetlError, EngineMismatch, ModelError, first_line
from edgetl.io import read_json, write_bytes, write_json
from edgetl.rundir import RunDir

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = "1,1,32"
DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_OPT_LEVEL = 3
SIDECAR_FORMAT = "edgetl-engine/1"
L4T_RELEASE_FILE = "/etc/nv_tegra_release"
REBUILD_HINT = "rebuild it here with `edgetl build`"


# -- optimisation profile ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """The batch range an engine accepts (min, max) and is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def shapes(self, sample_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {k: (getattr(self, k), *sample_shape) for k in ("min", "opt", "max")}

    def accepts(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def parse_batch(text: str | int | tuple) -> Profile:
    """`--batch`: "min,opt,max", or one number N for a fixed batch of N."""
    if isinstance(text, Profile):
        return text
    parts = [str(text)] if isinstance(text, int) else (list(map(str, text)) if isinstance(text, (tuple, list))
                                                       else [p.strip() for p in str(text).split(",")])
    if len(parts) == 1:
        parts *= 3
    bad = EdgetlError(f"--batch {text!r}: expected MIN,OPT,MAX (e.g. {DEFAULT_BATCH}) or one batch size",
                      "positive integers with MIN <= OPT <= MAX")
    if len(parts) != 3:
        raise bad
    try:
        lo, opt, hi = (int(p) for p in parts)
    except ValueError:
        raise bad from None
    if not 1 <= lo <= opt <= hi:
        raise bad
    return Profile(lo, opt, hi)


def onnx_input(path: str | os.PathLike) -> tuple[str, list[int | str | None]]:
    """Name and dims of the graph's (single) image input; a dim is an int, a symbolic name or None."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{path}: has {len(inputs)} graph inputs; edgetl engines take one image batch")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def check_profile(profile: Profile, dims: list, where: str) -> tuple[int, ...]:
    """The per-image shape (dims after the batch), after checking the profile fits the ONNX input."""
    if len(dims) != 4:
        raise ModelError(f"{where}: input has {len(dims)} dims, expected a 4-d image batch")
    sample = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise ModelError(f"{where}: only the batch axis may be dynamic, the input is {dims}",
                         "re-export with `edgetl export`")
    batch = dims[0]
    if isinstance(batch, int) and batch > 0 and (profile.min, profile.opt, profile.max) != (batch,) * 3:
        raise EdgetlError(f"{where}: the ONNX input has a fixed batch of {batch}, --batch asks for "
                          f"{profile.min},{profile.opt},{profile.max}",
                          f"pass --batch {batch}, or export with a dynamic batch")
    return tuple(sample)


# -- where engines live -----------------------------------------------------------------------------
def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe in a path on every OS)."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def engine_dir(run: RunDir, gpu_name: str, trt_version: str) -> Path:
    return run.engines_dir / f"{slug(gpu_name)}-trt{slug(trt_version)}"


def engine_file(run: RunDir, facts: dict[str, Any], precision: str) -> Path:
    return engine_dir(run, facts["gpu_name"], facts["tensorrt_version"]) / f"model.{precision}.plan"


def sidecar_path(plan: str | os.PathLike) -> Path:
    return Path(plan).with_suffix(".json")


# -- this machine -----------------------------------------------------------------------------------
def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> 'R36.3.0' (the L4T release a JetPack ships)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def l4t_release(path: str = L4T_RELEASE_FILE) -> str | None:
    try:
        return parse_l4t(Path(path).read_text(errors="replace"))
    except OSError:
        return None


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable (one line) where it is not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed here (`import tensorrt` fails)",
                                 "build engines on the target: a Jetson has it with JetPack; on x86 "
                                 "`pip install tensorrt` from NVIDIA's index") from None
    m = re.match(r"\d+", str(trt.__version__))
    if m is None or int(m.group()) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: edgetl needs 10.0 or newer "
                                 "(strongly typed networks)", "upgrade TensorRT (JetPack 6 ships 10.x)")
    return trt


def machine_facts(trt=None) -> dict[str, Any]:
    """What an engine is tied to on this machine: TensorRT version, GPU name, compute capability."""
    from edgetl.runtime._cuda import device_facts

    trt = trt or import_tensorrt()
    return {"tensorrt_version": str(trt.__version__), **device_facts(), "l4t_release": l4t_release()}


# -- the sidecar and the load-time check ------------------------------------------------------------
def read_sidecar(plan: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(plan)
    if not path.exists():
        raise EngineMismatch(f"{plan}: has no sidecar {path.name}, so edgetl did not build it (or it was renamed)",
                             f"edgetl loads only engines it built: {REBUILD_HINT}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise EngineMismatch(f"{path}: unreadable engine sidecar ({e})", REBUILD_HINT) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EngineMismatch(f"{path}: not an edgetl engine sidecar ({SIDECAR_FORMAT})", REBUILD_HINT)
    return data


def engine_mismatch(sidecar: dict[str, Any], facts: dict[str, Any]) -> str | None:
    """Why an engine built as `sidecar` says cannot run on a machine with `facts`; None when it can.

    A version-compatible engine runs on the same or a later TensorRT of the same major version; the GPU
    (name and compute capability) must always match: edgetl does not build hardware-compatible engines.
    """
    built = f"{sidecar.get('gpu_name')} (sm {sidecar.get('compute_capability')}), TensorRT {sidecar.get('tensorrt_version')}"
    here = f"{facts.get('gpu_name')} (sm {facts.get('compute_capability')}), TensorRT {facts.get('tensorrt_version')}"
    gpu_ok = (sidecar.get("gpu_name") == facts.get("gpu_name")
              and sidecar.get("compute_capability") == facts.get("compute_capability"))
    trt_ok = sidecar.get("tensorrt_version") == facts.get("tensorrt_version")
    if not trt_ok and sidecar.get("version_compatible"):
        b, h = _version_tuple(sidecar.get("tensorrt_version")), _version_tuple(facts.get("tensorrt_version"))
        trt_ok = bool(b and h and b[0] == h[0] and h >= b)
    if gpu_ok and trt_ok:
        return None
    return f"built for {built}, this is {here}"


def check_engine(plan: str | os.PathLike, sidecar: dict[str, Any], facts: dict[str, Any],
                 engine_sha256: str | None = None) -> None:
    """Refuse (EngineMismatch, one line) an engine for another machine, or one whose bytes changed."""
    reason = engine_mismatch(sidecar, facts)
    if reason:
        raise EngineMismatch(f"{plan}: {reason}", REBUILD_HINT)
    if engine_sha256 is not None and engine_sha256 != sidecar.get("engine_sha256"):
        raise EngineMismatch(f"{plan}: its SHA-256 differs from the one edgetl recorded when it built it",
                             f"edgetl loads only engines it built: {REBUILD_HINT}")


def _version_tuple(v: Any) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(v).split(".")[:3])
    except ValueError:
        return ()


# -- trtexec ---------------------------------------------------------------------------------------
def trtexec_command(onnx: str | os.PathLike, plan: str | os.PathLike, input_name: str, sample_shape: tuple[int, ...],
                    profile: Profile, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                    timing_cache: str | os.PathLike | None = None, opt_level: int = DEFAULT_OPT_LEVEL,
                    version_compatible: bool = False, dla_core: int | None = None) -> str:
    """The trtexec line that builds the same engine (to compare with, or to build without Python)."""
    shapes = profile.shapes(sample_shape)
    fmt = lambda s: f"{input_name}:{'x'.join(map(str, s))}"  # noqa: E731
    args = ["trtexec", f"--onnx={onnx}", "--stronglyTyped", f"--minShapes={fmt(shapes['min'])}",
            f"--optShapes={fmt(shapes['opt'])}", f"--maxShapes={fmt(shapes['max'])}",
            f"--memPoolSize=workspace:{int(workspace_mib)}M"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    args.append(f"--builderOptimizationLevel={int(opt_level)}")
    if version_compatible:
        args.append("--versionCompatible")
    if dla_core is not None:
        args += [f"--useDLACore={int(dla_core)}", "--allowGPUFallback"]
    args.append(f"--saveEngine={plan}")
    return shlex.join(args)


# -- the build -------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    plan: Path
    sidecar: Path
    trtexec: str
    seconds: float
    warnings: list[str]


def capturing_logger(trt, min_severity=None):
    """A trt.ILogger that keeps every message, so a failure can say TensorRT's own reason."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))

        def lines(self, worst_first: bool = True) -> list[str]:
            bad = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
            errors = [m for s, m in self.messages if s in bad]
            warnings = [m for s, m in self.messages if s == trt.ILogger.Severity.WARNING]
            return errors + warnings if worst_first else [m for _, m in self.messages]

    return _Logger()


def build(run_path: str | os.PathLike, precision: str = "fp32", batch: str | Profile = DEFAULT_BATCH,
          workspace_mib: int = DEFAULT_WORKSPACE_MIB, opt_level: int = DEFAULT_OPT_LEVEL,
          version_compatible: bool = False, dla_core: int | None = None, timing_cache: bool = True,
          log: Callable[[str], None] | None = None) -> BuildResult:
    """Build RUN/engines/<gpu>-trt<version>/model.<precision>.plan (+ .json sidecar) from the run's ONNX."""
    from edgetl.card import ModelCard

    log = log or (lambda _msg: None)
    run = RunDir(run_path)
    if precision not in PRECISIONS:
        raise EdgetlError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    onnx_path = run.onnx_for(precision, "tensorrt")
    run.require(onnx_path, hint="run `edgetl export` first" if precision == "fp32"
                else f"run `edgetl quantize --precision {precision}` first")
    profile = parse_batch(batch)
    if not 0 <= opt_level <= 5:
        raise EdgetlError(f"--opt-level {opt_level}: TensorRT's builder optimisation level is 0..5")
    if workspace_mib < 1:
        raise EdgetlError(f"--workspace {workspace_mib}: give the workspace limit in MiB (>= 1)")
    if dla_core is not None and dla_core < 0:
        raise EdgetlError(f"--dla-core {dla_core}: DLA cores are numbered from 0")
    if dla_core is not None and precision == "fp32":
        # DLA runs fp16 and int8 layers only: an fp32 graph would fall back to the GPU layer by layer
        raise EdgetlError("--dla-core: DLA runs fp16 and int8 graphs only, not fp32",
                          "build --precision fp16 or int8 (after `edgetl quantize`) for the DLA")
    card = ModelCard.from_onnx(onnx_path)
    input_name, dims = onnx_input(onnx_path)
    sample = check_profile(profile, dims, str(onnx_path))

    trt = import_tensorrt()
    facts = machine_facts(trt)
    plan = engine_file(run, facts, precision)
    cache_file = plan.parent / "timing.cache"
    command = trtexec_command(onnx_path, plan, input_name, sample, profile, workspace_mib,
                              cache_file if timing_cache else None, opt_level, version_compatible, dla_core)

    logger = capturing_logger(trt)
    builder = trt.Builder(logger)
    # 10.x needs the flag; 11.x accepts and ignores it (always strongly typed); a release that drops it
    # is strongly typed anyway.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgetlError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it:\n  " + "\n  ".join(errors or ["(no detail)"]),
                          "check the ops against TensorRT's ONNX support matrix; re-export with another --opset")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(opt_level)
    trt_profile = builder.create_optimization_profile()
    shapes = profile.shapes(sample)
    trt_profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(trt_profile)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise BackendUnavailable("--dla-core: this GPU has no DLA (Jetson AGX/NX Orin and Xavier do)",
                                     "leave --dla-core out to build for the GPU")
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise EdgetlError(f"--dla-core {dla_core}: this device has DLA cores 0..{builder.num_DLA_cores - 1}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    cache = None
    if timing_cache:
        blob = cache_file.read_bytes() if cache_file.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building {plan.name} on {facts['gpu_name']} with TensorRT {facts['tensorrt_version']} "
        f"(batch {profile.min},{profile.opt},{profile.max})")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EdgetlError(f"{onnx_path}: TensorRT could not build an engine: " +
                          " | ".join(logger.lines()[:5] or ["no reason logged"]),
                          "try a larger --workspace, or --opt-level 3")
    data = bytes(serialized)
    if cache is not None:
        write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    sidecar = make_sidecar(facts, precision, input_name, shapes, onnx_path, data, seconds, card.model_dump(mode="json"),
                           command, workspace_mib=workspace_mib, opt_level=opt_level,
                           version_compatible=version_compatible, dla_core=dla_core)
    write_engine(plan, data, sidecar)
    warnings = [m for s, m in logger.messages if s == trt.ILogger.Severity.WARNING]
    return BuildResult(plan, sidecar_path(plan), command, seconds, warnings)


def make_sidecar(facts: dict[str, Any], precision: str, input_name: str, shapes: dict[str, tuple[int, ...]],
                 onnx_path: str | os.PathLike, engine: bytes, seconds: float, card: dict[str, Any], trtexec: str,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, opt_level: int = DEFAULT_OPT_LEVEL,
                 version_compatible: bool = False, dla_core: int | None = None) -> dict[str, Any]:
    """What an engine is: the machine it was built on, how, from which ONNX (hash), its own hash, the card."""
    from edgetl.io import sha256_file

    return {
        "format": SIDECAR_FORMAT, **facts, "precision": precision,
        "profile": {"input": input_name, **{k: list(v) for k, v in shapes.items()}},
        "workspace_mib": int(workspace_mib), "builder_optimization_level": int(opt_level),
        "version_compatible": bool(version_compatible), "dla_core": dla_core,
        "source_onnx": Path(onnx_path).name, "source_onnx_sha256": sha256_file(onnx_path),
        "engine_sha256": hashlib.sha256(engine).hexdigest(), "build_seconds": round(seconds, 2),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgetl_version": __version__, "trtexec": trtexec, "card": card,
    }


def write_engine(plan: str | os.PathLike, engine: bytes, sidecar: dict[str, Any]) -> None:
    """The plan, then its sidecar, each atomically: a plan without a sidecar is refused at load, never half-read."""
    write_bytes(plan, engine)
    write_json(sidecar_path(plan), sidecar)


def _parser_error(err) -> str:
    """One line per ONNX parser error: node, its name and op where TensorRT says them, and the reason."""
    where = [f"node {err.node()}"]
    for attr in ("node_name", "node_operator"):
        fn = getattr(err, attr, None)  # 10.x has both; keep the line even if a version lacks one
        if fn is not None and fn():
            where.append(str(fn()))
    return f"{' '.join(where)}: {err.desc()}"
