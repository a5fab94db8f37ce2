"""`edgetl build`: a TensorRT engine from the run's precision-baked ONNX, with a sidecar that says what it is for.

Precision lives in the ONNX graph (Q/DQ for int8, an fp16 body for fp16), so the network is always created
STRONGLY_TYPED (TensorRT 10.x needs the flag; 11.x is always strongly typed and ignores it) and no FP16/INT8
builder flag is ever set. What an engine is (sidecar, names, machine facts, the mismatch rule) lives in
edgetl.engine and edgetl.portable.engines; this module only builds.

Everything that needs no TensorRT (profile, trtexec line) is a plain function, tested everywhere;
`build()` itself runs only where TensorRT and a GPU are.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgetl import __version__
from edgetl.engine import capturing_logger, engine_file, import_flavour, machine_facts, sidecar_path
from edgetl.errors import BackendUnavailable, EdgetlError, ModelError, first_line
from edgetl.io import sha256_file, write_bytes, write_json
from edgetl.portable.engines import ENGINE_PRECISIONS as PRECISIONS
from edgetl.portable.engines import make_sidecar
from edgetl.rundir import RunDir

DEFAULT_BATCH = "1,1,32"
DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_OPT_LEVEL = 3


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

    trt = import_flavour("tensorrt")
    facts = machine_facts("tensorrt", trt)
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

    log(f"building {plan.name} on {facts['gpu_name']} with TensorRT {facts['library_version']} "
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
    sidecar = make_sidecar(
        library=facts["library"], library_version=facts["library_version"], gpu_name=facts["gpu_name"],
        compute_capability=facts["compute_capability"], cuda_driver=facts.get("cuda_driver"),
        l4t_release=facts.get("l4t_release"), precision=precision,
        profile={"input": input_name, **{k: list(v) for k, v in shapes.items()}}, source_onnx=Path(onnx_path).name,
        source_onnx_sha256=sha256_file(onnx_path), engine_sha256=hashlib.sha256(data).hexdigest(),
        builder="edgetl build", edgetl_version=__version__, card=card.model_dump(mode="json"),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), build_seconds=seconds,
        workspace_mib=int(workspace_mib), builder_optimization_level=int(opt_level),
        version_compatible=version_compatible, dla_core=dla_core, trtexec=command)
    write_engine(plan, data, sidecar)
    warnings = [m for s, m in logger.messages if s == trt.ILogger.Severity.WARNING]
    return BuildResult(plan, sidecar_path(plan), command, seconds, warnings)


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
