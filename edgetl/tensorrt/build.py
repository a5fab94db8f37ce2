"""`edgetl build`: a TensorRT engine from the run's precision-baked ONNX, with a sidecar that says what it is for.

Precision lives in the ONNX graph (Q/DQ for int8, an fp16 body for fp16), so the network is always created
STRONGLY_TYPED (TensorRT 10.x needs the flag; 11.x is always strongly typed and ignores it) and no FP16/INT8
builder flag is ever set. What an engine is (sidecar, names, machine facts, the mismatch rule) lives in
edgetl.tensorrt.engine and edgetl.portable.engines; this module only builds.

Two builder flavours, one `build()`: TensorRT (10.x/11.x, on the target GPU) and TensorRT for RTX
(target "rtx": ahead of time for named compute capabilities, on any x86-64 machine, GPU or not). What
differs between them is said once, in `Flavour`; build() asks it, never the library's name.

Everything that needs no NVIDIA library (profile, trtexec line, the ONNX checks) is a plain function,
tested everywhere; TensorRT-RTX's real parser and builder run in the tests on the CPU.
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
from typing import Any, Callable, Optional, Union

from pydantic import Field, field_validator

from edgetl import __version__
from edgetl.choices import BuildTargetName, EnginePrecisionName
from edgetl.tensorrt.engine import (capturing_logger, engine_dir, engine_file, import_flavour, init_plugins, machine_facts,
                           rtx_target, sidecar_path)
from edgetl.errors import BackendUnavailable, EdgetlError, FormMismatch, ModelError, first_line
from edgetl.io import sha256_file, write_bytes, write_json
from edgetl.portable.engines import make_sidecar, plan_name
from edgetl.portable.trtexec import OPT_LEVEL, WORKSPACE_MIB, trtexec_command
from edgetl.portable.forms import FP16, FP32, INT8, U8S8, Form, form_for, form_of_file, mismatch
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, Settings, record_settings

DEFAULT_BATCH = "1,1,32"
DEFAULT_WORKSPACE_MIB = WORKSPACE_MIB  # the trtexec line's defaults, said once in portable/trtexec.py
DEFAULT_OPT_LEVEL = OPT_LEVEL
TARGETS = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}  # target -> the library that builds it
# GeForce/RTX PRO generations: Ampere, Ada, Blackwell. NVIDIA's default set also names 8.0 (A100, not an RTX
# card) in some releases, so edgetl always names the set explicitly and the sidecar says exactly what it is.
RTX_COMPUTE_CAPABILITIES = ("8.6", "8.9", "12.0")


# -- the two builder flavours ------------------------------------------------------------------------
@dataclass(frozen=True)
class Flavour:
    """What one NVIDIA builder can do. The one place build() learns how TensorRT and TensorRT-RTX differ
    (both are always strongly typed here; a builder optimisation level is set only where the config has it)."""

    library: str
    title: str
    ahead_of_time: bool  # builds for named compute capabilities on any machine, GPU or not (RTX)
    timing_cache: bool  # RTX: a timing cache changes nothing and forces a GPU query, so no CPU-only build
    dla: bool
    trtexec: bool  # whether `trtexec` builds the same engine (TensorRT-RTX ships its own tool instead)


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "TensorRT", ahead_of_time=False, timing_cache=True, dla=True, trtexec=True),
    "tensorrt_rtx": Flavour("tensorrt_rtx", "TensorRT-RTX", ahead_of_time=True, timing_cache=False, dla=False,
                            trtexec=False),
}


def parse_compute_capabilities(text: str | list | tuple | None) -> tuple[str, ...] | None:
    """compute_capability "8.6,8.9,12.0" (or a list) -> ("8.6", "8.9", "12.0"); None when not given."""
    if text is None:
        return None
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else map(str, text)) if p.strip()]
    bad = [p for p in parts if not re.fullmatch(r"\d{1,2}\.\d", p)]
    if not parts or bad:
        raise EdgetlError(f"compute_capability {text!r}: expected MAJOR.MINOR[,MAJOR.MINOR...], e.g. "
                          f"{','.join(RTX_COMPUTE_CAPABILITIES)}")
    return tuple(dict.fromkeys(parts))


# -- optimisation profile ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """The batch range an engine accepts (min, max) and is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def shapes(self, sample_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {k: (getattr(self, k), *sample_shape) for k in ("min", "opt", "max")}


def parse_batch(text: str | int | tuple) -> Profile:
    """batch: "min,opt,max", or one number N for a fixed batch of N."""
    if isinstance(text, Profile):
        return text
    parts = [str(text)] if isinstance(text, int) else (list(map(str, text)) if isinstance(text, (tuple, list))
                                                       else [p.strip() for p in str(text).split(",")])
    if len(parts) == 1:
        parts *= 3
    bad = EdgetlError(f"batch {text!r}: expected MIN,OPT,MAX (e.g. {DEFAULT_BATCH}) or one batch size",
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


def ort_form_reason(path: str | os.PathLike) -> str | None:
    """Why a graph is the ONNX Runtime (CPU) int8 form rather than the TensorRT form, or None.

    The cpu form has uint8 activations with non-zero zero points (U8S8) and quantized biases; TensorRT's
    parser takes only symmetric int8 Q/DQ ("Non-zero zero point is not supported"), so it is refused here,
    before any parser, with the file to build instead."""
    import onnx
    from onnx import TensorProto

    if form_of_file(Path(path).name) is U8S8:
        return "it is the ONNX Runtime (CPU) form of the int8 graph"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    if any(t.name in zero_points and t.data_type == TensorProto.UINT8 for t in model.graph.initializer):
        return "it has uint8 (asymmetric) Q/DQ, the ONNX Runtime (CPU) int8 form"
    return None


def graph_precision(path: str | os.PathLike) -> str:
    """The precision the graph itself holds, whatever its name: "int8" with Q/DQ nodes, "fp16" with float16
    weights, else "fp32". The engine's name and sidecar say this, so it must agree with the setting."""
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return INT8
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return FP16
    return FP32


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
        raise EdgetlError(f"{where}: the ONNX input has a fixed batch of {batch}, the batch setting asks for "
                          f"{profile.min},{profile.opt},{profile.max}",
                          f"set batch {batch}, or export with a dynamic batch")
    return tuple(sample)


# -- the build -------------------------------------------------------------------------------------
class BuildSettings(Settings):
    """What `edgetl build` builds. Precision lives in the ONNX graph: `precision` picks which graph."""

    precision: EnginePrecisionName = Field("fp32", description="which precision-baked ONNX to build")
    batch: str = Field(DEFAULT_BATCH, description="optimisation profile MIN,OPT,MAX of the batch axis, or one fixed N")
    workspace: int = Field(DEFAULT_WORKSPACE_MIB, ge=1, description="builder workspace limit, MiB")
    opt_level: int = Field(DEFAULT_OPT_LEVEL, ge=0, le=5, description="builder optimisation level 0..5 (higher: "
                           "longer build, maybe faster)")
    version_compatible: bool = Field(False, description="engine runs on later TensorRT of the same major (lean "
                                     "runtime)")
    dla_core: Optional[int] = Field(None, ge=0, description="build for this DLA core (Jetson Orin/Xavier), GPU "
                                    "fallback on")
    timing_cache: bool = Field(True, description="reuse and update RUN/engines/<gpu>-trt<ver>/timing.cache")
    target: BuildTargetName = Field("tensorrt", description="tensorrt: TensorRT, for this GPU | rtx: TensorRT for "
                                    "RTX, ahead of time, GPU or not")
    compute_capability: Optional[str] = Field(None, description="target rtx: compute capabilities of the RTX GPUs "
                                              "to build for",
                                              json_schema_extra={"default_text": ",".join(RTX_COMPUTE_CAPABILITIES)})
    tf32: bool = Field(False, description="let fp32 layers compute in TF32 on Ampere or later")
    onnx: Optional[Path] = Field(None, description="build this ONNX file instead of the run's model.<precision>.onnx")

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, value: Union[str, int, list]) -> str:
        try:
            p = parse_batch(value)
        except EdgetlError as e:
            raise ValueError(e.message) from None
        return f"{p.min},{p.opt},{p.max}"

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _compute_capability(cls, value: Union[str, list, None]) -> Optional[str]:
        try:
            ccs = parse_compute_capabilities(value)
        except EdgetlError as e:
            raise ValueError(e.message) from None
        return None if ccs is None else ",".join(ccs)


class BuildResult(Result):
    """The engine written (its sidecar, RUN/engines/<target>/model.<precision>.json, says what it is for)."""

    plan: Path
    sidecar: Path
    trtexec: Optional[str]  # the equivalent trtexec line (None for TensorRT-RTX, which trtexec cannot build)
    seconds: float
    warnings: list[str]  # every warning the library logged, the parser's included
    layers: int = 0  # layers of the parsed network (before the builder fuses them)
    parser_warnings: list[str] = []


@dataclass(frozen=True)
class BuildPlan:
    """Everything `build` decided before touching an NVIDIA library: which graph, which builder, which
    profile, DLA and cache use. `plan_build` makes it (and refuses what cannot be built); the rest only acts."""

    run: RunDir
    cfg: BuildSettings
    flavour: Flavour
    compute_capabilities: tuple[str, ...]  # an ahead-of-time build's targets; () for TensorRT
    onnx: Path
    form: Form  # of the graph, from its metadata (or, for older/foreign graphs, its name and contents)
    card: Any  # edgetl.card.ModelCard
    profile: Profile
    input_name: str
    sample: tuple[int, ...]  # the per-image shape

    @property
    def precision(self) -> str:
        return self.form.precision

    @property
    def timing_cache(self) -> bool:
        return self.cfg.timing_cache and self.flavour.timing_cache


def plan_build(run_path: str | os.PathLike, cfg: BuildSettings) -> BuildPlan:
    """Decide what `build` will do, refusing (one EdgetlError) whatever cannot be built; reads the ONNX
    header only, never TensorRT, so every refusal is testable everywhere."""
    from edgetl.card import ModelCard

    run = RunDir(run_path)
    flavour = FLAVOURS[TARGETS[cfg.target]]
    ccs = parse_compute_capabilities(cfg.compute_capability)
    if ccs and not flavour.ahead_of_time:
        raise EdgetlError(f"compute_capability: {flavour.title} builds for the GPU it runs on",
                          "leave it out, or build with target rtx")
    onnx_path = Path(cfg.onnx) if cfg.onnx is not None else run.onnx_for(cfg.precision, "tensorrt")
    run.require(onnx_path, hint=form_for(cfg.precision).hint())
    form = source_form(run, onnx_path, cfg.precision)
    profile = parse_batch(cfg.batch)
    _check_builder_options(flavour, cfg)
    card = ModelCard.from_onnx(onnx_path)
    input_name, dims = onnx_input(onnx_path)
    sample = check_profile(profile, dims, str(onnx_path))
    if flavour.ahead_of_time:
        ccs = ccs or RTX_COMPUTE_CAPABILITIES
    return BuildPlan(run=run, cfg=cfg, flavour=flavour, compute_capabilities=tuple(ccs or ()), onnx=onnx_path,
                     form=form, card=card, profile=profile, input_name=input_name, sample=sample)


def source_form(run: RunDir, onnx_path: Path, precision: str) -> Form:
    """The form of the graph to build, refused (FormMismatch, one line) unless it is `precision`'s TensorRT
    form: else model.int8.plan and its sidecar would claim int8 for an fp32 graph. The graph's metadata
    says its form; an older or foreign graph without it is judged by its name and contents."""
    from edgetl.card import onnx_form

    form = onnx_form(onnx_path, by_name=False)
    why_ort = ("it is the ONNX Runtime (CPU) form of the int8 graph" if form is U8S8 else None) if form \
        else ort_form_reason(onnx_path)
    if why_ort:
        raise FormMismatch(f"{onnx_path}: {why_ort}, which NVIDIA's parser refuses (non-zero zero points)",
                           f"build the TensorRT form instead: {run.onnx_for(INT8, 'tensorrt')} "
                           f"(`edgetl build {run.path} --precision int8`)")
    form = form or form_for(graph_precision(onnx_path))
    why = mismatch(form, precision)
    if why:
        wanted = form_for(precision)
        raise FormMismatch(f"{onnx_path}: {why}",
                           f"build it with --precision {form.precision}, or give the {precision} graph "
                           f"({wanted.file}, from `edgetl {wanted.stage}`)")
    return form


def _check_builder_options(flavour: Flavour, cfg: BuildSettings) -> None:
    """Refuse what this builder cannot do: DLA (on a builder without one, or for an fp32 graph), version
    compatibility on an ahead-of-time builder."""
    if cfg.dla_core is not None and not flavour.dla:
        raise EdgetlError(f"dla_core: {flavour.title} has no DLA (Jetson's TensorRT does)", "leave dla_core out")
    if cfg.version_compatible and flavour.ahead_of_time:
        raise EdgetlError(f"version_compatible: a {flavour.title} engine runs on the {flavour.title} version "
                          "that built it", "leave version_compatible off")
    if cfg.dla_core is not None and cfg.precision == FP32:
        # DLA runs fp16 and int8 layers only: an fp32 graph would fall back to the GPU layer by layer
        raise EdgetlError("dla_core: DLA runs fp16 and int8 graphs only, not fp32",
                          "build precision fp16 or int8 (after `edgetl quantize`) for the DLA")


def build(run_path: str | os.PathLike, cfg: BuildSettings, events: Events = SILENT) -> BuildResult:
    """Build RUN/engines/<target>-<library><version>/model.<precision>.plan (+ .json sidecar) from the run's
    ONNX (or `cfg.onnx`). target "tensorrt": for this GPU; "rtx": TensorRT-RTX, ahead of time for
    `cfg.compute_capability` (default RTX_COMPUTE_CAPABILITIES), with or without a GPU here."""
    plan = plan_build(run_path, cfg)
    flavour = plan.flavour
    events.status(f"loading {flavour.title}")
    trt = import_flavour(flavour.library)
    facts, engine = _engine_target(trt, plan)
    cache_file = engine.parent / "timing.cache"
    profile = plan.profile
    command = shlex.join(trtexec_command(
        plan.onnx, engine, plan.input_name, plan.sample, (profile.min, profile.opt, profile.max),
        workspace_mib=cfg.workspace, timing_cache=cache_file if plan.timing_cache else None, opt_level=cfg.opt_level,
        version_compatible=cfg.version_compatible, dla_core=cfg.dla_core, tf32=cfg.tf32)) if flavour.trtexec else None

    events.status(f"parsing {plan.onnx.name}")
    logger = capturing_logger(trt)
    builder, network = _parse(trt, logger, plan)
    parser_warnings = logger.warnings()
    layers = int(network.num_layers)
    own_warnings: list[str] = []
    config = _configure(trt, logger, builder, network, plan)
    cache = attach_timing_cache(config, cache_file, own_warnings.append) if plan.timing_cache else None

    ccs = plan.compute_capabilities
    where = f"for compute capability {', '.join(ccs)}" if flavour.ahead_of_time else f"on {facts['gpu_name']}"
    events.status(f"building {engine.name} {where} with {flavour.title} {facts['library_version']} "
                  f"(batch {plan.profile.min},{plan.profile.opt},{plan.profile.max})")
    data, seconds = _serialise(logger, builder, network, config, plan)
    if cache is not None:
        write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    write_engine(engine, data, _sidecar(plan, facts, data, seconds, command))
    record_settings(plan.run.path, "build", cfg)  # only once the engine is there: a refused build leaves the run as it was
    return BuildResult(plan=engine, sidecar=sidecar_path(engine), trtexec=command, seconds=seconds,
                       warnings=own_warnings + logger.warnings(), layers=layers, parser_warnings=parser_warnings)


def _engine_target(trt, plan: BuildPlan) -> tuple[dict[str, Any], Path]:
    """The machine facts the sidecar records, and the engine's path (named after the graph's precision)."""
    library = plan.flavour.library
    if plan.flavour.ahead_of_time:
        facts = _optional_machine_facts(library, trt)
        return facts, engine_dir(plan.run, rtx_target(plan.compute_capabilities), library,
                                 facts["library_version"]) / plan_name(plan.precision)
    facts = machine_facts(library, trt)
    return facts, engine_file(plan.run, facts, plan.precision)


def _parse(trt, logger, plan: BuildPlan):
    """(builder, network) with the graph parsed; one EdgetlError listing the parser's errors."""
    init_plugins(trt, logger)
    builder = trt.Builder(logger)
    # 10.x needs the flag; 11.x and TensorRT-RTX accept it (they are always strongly typed); a release that
    # drops it is strongly typed anyway.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = [parser_error_line(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgetlError(f"{plan.onnx}: {plan.flavour.title} {trt.__version__}'s ONNX parser cannot take it:\n  "
                          + "\n  ".join(errors or logger.lines()[:3] or ["(no detail)"]),
                          "check the ops against the parser's ONNX support matrix; re-export with another opset")
    return builder, network


def _configure(trt, logger, builder, network, plan: BuildPlan):
    """The builder config: workspace, level, TF32, target compute capabilities, the profile, DLA."""
    cfg, title = plan.cfg, plan.flavour.title
    config = new_config(trt, builder, cfg.workspace, cfg.opt_level, cfg.tf32)
    if plan.flavour.ahead_of_time:
        cc_enums = _compute_capability_enums(trt, plan.compute_capabilities)
        config.num_compute_capabilities = len(cc_enums)
        for i, cc in enumerate(cc_enums):
            if not config.set_compute_capability(cc, i):
                raise EdgetlError(f"compute_capability: {title} {trt.__version__} refused "
                                  f"{plan.compute_capabilities[i]}: "
                                  + " | ".join(logger.lines()[:2] or ["no reason logged"]))
    trt_profile = builder.create_optimization_profile()
    shapes = plan.profile.shapes(plan.sample)
    trt_profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    if config.add_optimization_profile(trt_profile) < 0:
        raise EdgetlError(f"{plan.onnx}: {title} rejected the optimisation profile {shapes}: "
                          + " | ".join(logger.lines()[:2] or ["no reason logged"]))
    if cfg.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if cfg.dla_core is not None:
        _use_dla(trt, builder, config, cfg.dla_core)
    return config


def _use_dla(trt, builder, config, dla_core: int) -> None:
    """Send layers to DLA core `dla_core`, the rest to the GPU; refused on a GPU without one."""
    if builder.num_DLA_cores == 0:
        raise BackendUnavailable("dla_core: this GPU has no DLA (Jetson AGX/NX Orin and Xavier do)",
                                 "leave dla_core out to build for the GPU")
    if not 0 <= dla_core < builder.num_DLA_cores:
        raise EdgetlError(f"dla_core {dla_core}: this device has DLA cores 0..{builder.num_DLA_cores - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU


def _serialise(logger, builder, network, config, plan: BuildPlan) -> tuple[bytes, float]:
    """The engine's bytes and the seconds the builder took."""
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EdgetlError(f"{plan.onnx}: {plan.flavour.title} could not build an engine: " +
                          " | ".join(logger.lines()[:5] or ["no reason logged"]),
                          "try a larger workspace, or opt_level 3")
    return bytes(serialized), seconds


def _sidecar(plan: BuildPlan, facts: dict[str, Any], data: bytes, seconds: float,
             command: str | None) -> dict[str, Any]:
    cfg, shapes = plan.cfg, plan.profile.shapes(plan.sample)
    return make_sidecar(
        library=facts["library"], library_version=facts["library_version"], gpu_name=facts["gpu_name"],
        compute_capability=facts["compute_capability"], target_compute_capabilities=list(plan.compute_capabilities)
        or None, cuda_driver=facts.get("cuda_driver"), l4t_release=facts.get("l4t_release"),
        precision=plan.precision, profile={"input": plan.input_name, **{k: list(v) for k, v in shapes.items()}},
        source_onnx=plan.onnx.name, source_onnx_sha256=sha256_file(plan.onnx),
        engine_sha256=hashlib.sha256(data).hexdigest(), builder="edgetl build", edgetl_version=__version__,
        card=plan.card.model_dump(mode="json"),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), build_seconds=seconds,
        workspace_mib=int(cfg.workspace), builder_optimization_level=int(cfg.opt_level),
        version_compatible=cfg.version_compatible, dla_core=cfg.dla_core, trtexec=command)


def new_config(trt, builder, workspace_mib: int = DEFAULT_WORKSPACE_MIB, opt_level: int = DEFAULT_OPT_LEVEL,
               tf32: bool = False):
    """The builder config every flavour shares: workspace limit, optimisation level (where the library has
    one), and TF32 cleared unless asked: it is on by default, so an "fp32" engine on Ampere or later (Orin
    included) would compute its matmuls and convolutions in TF32."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(opt_level)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:
        (config.set_flag if tf32 else config.clear_flag)(tf32_flag)
    return config


def write_engine(plan: str | os.PathLike, engine: bytes, sidecar: dict[str, Any]) -> None:
    """The plan, then its sidecar, each atomically: a plan without a sidecar is refused at load, never half-read."""
    write_bytes(plan, engine)
    write_json(sidecar_path(plan), sidecar)


def attach_timing_cache(config, path: Path, warn: Callable[[str], None]):
    """Give the builder config the persistent timing cache at `path` and return it. An unreadable or
    corrupt file, or one the builder rejects, falls back to an empty cache with a warning (as Polygraphy
    does): a cache only saves build time, so it must never stop a build."""
    blob = b""
    if path.exists():
        try:
            blob = path.read_bytes()
        except OSError as e:
            warn(f"{path}: unreadable timing cache ({first_line(e)}); starting an empty one")
    cache = None
    try:
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            warn(f"{path}: corrupt timing cache; starting an empty one")
    except Exception as e:  # some releases raise on bytes they cannot deserialize
        warn(f"{path}: corrupt timing cache ({first_line(e)}); starting an empty one")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if cache is not None:
            warn(f"{path}: the builder rejected this timing cache (another GPU or version?); starting an empty one")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            warn("the builder accepts no timing cache here; building without one")
            return None
    return cache


def parser_error_line(err) -> str:
    """One line per ONNX parser error: node index, name and op, and the reason. Where the parser's reason is
    only a failed check ('false'), say that the op is unsupported and which check said so."""
    node = _call(err, "node")
    where = [f"node {node}" if isinstance(node, int) and node >= 0 else "graph"]  # -1: the graph as a whole
    name = _call(err, "node_name")
    op = _call(err, "node_operator")
    if name:
        where.append(repr(str(name)))
    if op:
        where.append(f"({op})")
    desc = str(err.desc()).strip()
    if desc.lower() in ("", "false"):
        code = str(_call(err, "code") or "").split(".")[-1].replace("_", " ").lower() or "unsupported"
        func = _call(err, "func")
        desc = f"{code}" + (f" ({func} failed)" if func else "")
    return f"{' '.join(where)}: {desc}"




def _call(obj, attr: str):
    """obj.attr() where this release has it (ParserError's accessors differ between releases), else None."""
    fn = getattr(obj, attr, None)
    try:
        return fn() if callable(fn) else fn
    except Exception:
        return None


def _compute_capability_enums(trt, ccs: tuple[str, ...]) -> list:
    """The library's ComputeCapability members for "8.6"-style strings, or one line naming those it has."""
    members = getattr(trt, "ComputeCapability", None)
    known = {}
    for name in getattr(members, "__members__", {}):
        m = re.fullmatch(r"SM(\d+)(\d)", name)
        if m:
            known[f"{m.group(1)}.{m.group(2)}"] = getattr(members, name)
    missing = [cc for cc in ccs if cc not in known]
    if missing:
        raise EdgetlError(f"compute_capability {','.join(missing)}: TensorRT-RTX {trt.__version__} builds for "
                          f"{', '.join(sorted(known, key=lambda v: tuple(map(int, v.split('.')))))}")
    return [known[cc] for cc in ccs]


def _optional_machine_facts(library: str, trt) -> dict[str, Any]:
    """The library version, and the GPU where one is visible: an ahead-of-time build needs none."""
    try:
        return machine_facts(library, trt)
    except EdgetlError:  # no GPU, no libcudart, no driver: none is needed to build ahead of time
        return {"library": library, "library_version": str(trt.__version__), "gpu_name": None,
                "compute_capability": None, "cuda_driver": None, "l4t_release": None}
