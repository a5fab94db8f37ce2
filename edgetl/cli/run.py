"""The `edgetl` command line: one thin command per stage. Logic lives in the stage modules."""

from __future__ import annotations

import math
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from edgetl.choices import Backend as BackendChoice, Device as DeviceChoice, Precision as PrecisionChoice
from edgetl.choices import CalibMethod, QuantPrecision, QuantTarget
from edgetl.choices import BuildTarget, EnginePrecision, TritonKind
from edgetl.choices import CheckMode
from edgetl.choices import DeployBackend, DeployDevice
from edgetl.presentation.console import console, err_console
from edgetl.rundir import lock_run  # light: names and the run lock only

# rich_markup_mode None: help text is printed as written, so "[default: X]" and "<stage>" are not eaten as markup
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Fine-tune, export, quantize, build and benchmark image classifiers for NVIDIA edge devices.")


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry. Every way out is one exit code and, on failure, one or two lines on stderr, never
    a traceback: 0 ok, 1 an EdgetlError (or its own exit_code), 2 a usage error, 128+N a signal (130 Ctrl-C)."""
    sys.exit(_run(sys.argv[1:] if argv is None else list(argv)))


def _run(args: List[str]) -> int:
    from edgetl.errors import EdgetlError, Interrupted

    command = typer.main.get_command(app)
    received: dict = {}
    restore = _unwind_on_sigterm(received)
    try:
        # make_context + invoke rather than app(): Typer's own main turns Ctrl-C into a bare exit code,
        # which would lose what the stage kept, and its error types differ between Typer versions.
        with command.make_context("edgetl", args) as ctx:
            command.invoke(ctx)
        return 0
    except EdgetlError as e:
        _print_error(e.message, e.hint)
        return int(getattr(e, "exit_code", 1) or 1)
    except KeyboardInterrupt as e:
        signum = received.get("signum", signal.SIGINT)
        what = e.message if isinstance(e, Interrupted) else (
            f"edgetl {_command_name(args)} stopped before it finished; nothing half-written was kept and files "
            "it had not yet replaced are unchanged")
        _print_error(f"interrupted ({signal.Signals(signum).name}): {what}", None, label="")
        return 128 + signum
    except _exit_types() as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except _abort_types():
        _print_error("aborted", None)
        return 1
    except _click_error_types() as e:
        return _print_usage_error(e, args)
    except BrokenPipeError:
        # `edgetl ... | head`: the reader left; stop quietly (and keep Python's exit-time flush quiet too).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no real file (captured): nothing to quieten
            pass
        return 1
    except OSError as e:
        # A write that no atomic_path turned into a RunDirError (a library writing its own file): still one line.
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        written = e.filename2 or e.filename  # shutil's copies name the source first, the file written second
        where = os.fsdecode(written) if written else "a file"
        _print_error(f"{where}: cannot write ({e.strerror or e})", "free space on that disk, or write elsewhere")
        return 1
    finally:
        restore()


def _print_error(message: str, hint: Optional[str], label: str = "error: ") -> None:
    """Markup off: a message may hold [brackets] (paths, lists) that rich would eat or choke on."""
    from rich.text import Text

    # A path may hold a line break: shown escaped, so the error stays one line.
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    hint = hint and hint.replace("\r", "\\r").replace("\n", "\\n")
    line = Text(label, style="bold red") + Text(message) if label else Text(message, style="bold red")
    err_console.print(line, soft_wrap=True, markup=False, highlight=False)
    if hint:
        err_console.print(f"  hint: {hint}", soft_wrap=True, markup=False, highlight=False)


def _bare_context(args: List[str]):
    """A context for the usage line when the parser raised without one (an option missing its value)."""
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="edgetl")
    sub = getattr(group, "commands", {}).get(_command_name(args))
    return sub.context_class(sub, info_name=_command_name(args), parent=ctx) if sub is not None else ctx


def _print_usage_error(e: Exception, args: List[str]) -> int:
    """Click's message for a usage error (unknown command or option, missing argument, bad value), in two lines."""
    code = int(getattr(e, "exit_code", 2))
    if type(e).__name__ == "NoArgsIsHelpError":  # bare `edgetl` or a group without a command: the help is the answer
        e.show()
        return code
    ctx = getattr(e, "ctx", None) or _bare_context(args)
    usage, where = ctx.get_usage().strip(), ctx.command_path
    _print_error(e.format_message(), None)
    err_console.print(f"  {usage}  (more: {where} --help)", soft_wrap=True, markup=False, highlight=False)
    return code


def _command_name(args: List[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def _unwind_on_sigterm(received: dict):
    """SIGTERM unwinds like Ctrl-C (finally blocks and temp-file clean-up run) instead of killing the process
    mid-write; `received` records which signal came. Returns a function that restores the previous handler."""
    import threading

    def handler(signum, frame):
        received["signum"] = signum
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # someone else (a test runner, a supervisor) handles it: leave it alone
        return lambda: None
    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _typer_and_click(*names: str) -> tuple:
    """The classes called `names` in Typer and, where installed, click: Typer 0.2x ships its own copy of click's
    exceptions, older Typer raises click's."""
    import importlib

    found = []
    for module in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(dict.fromkeys(found))


def _exit_types() -> tuple:
    return _typer_and_click("Exit")


def _abort_types() -> tuple:
    return _typer_and_click("Abort")


def _click_error_types() -> tuple:
    return _typer_and_click("ClickException")


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, help="print the edgetl version and exit",
                                 callback=lambda value: _print_version(value)),
) -> None:
    pass


def _config_option():
    """`--config FILE`, the same on every command: a stage's settings as YAML (RUN/settings/<stage>.yaml is one,
    written by the stage itself), every option given on the command line winning over it."""
    return typer.Option(None, "--config", dir_okay=False,
                        help="YAML file of settings (e.g. RUN/settings/<command>.yaml); options given here win")


def _overrides(given: Dict[str, Any], *positional: str) -> Dict[str, Any]:
    """A command's options as settings overrides for load_settings: an option not given (None) is left out so
    the YAML file or the default holds; an Enum becomes its value, a Path its text. `given` is the command's
    `locals()` taken first thing; `positional` names its arguments that are not settings (the run directory);
    `config` itself is never one."""
    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in given.items() if v is not None and k != "config" and k not in positional}


from edgetl.choices import DIST_TIMEOUT_MAX, FLEET_JOBS_MAX, IMG_SIZE_MAX, IMG_SIZE_MIN, SEED_MAX  # noqa: E402


def _positive_seconds(value: Optional[float], most: float = math.inf) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and 0 < value <= most):  # nan passes every `<` test
        raise typer.BadParameter(f"{value}: give a number of seconds > 0" + (f" and <= {most:g}" if most < math.inf else ""))
    return value


def _print_version(value: bool) -> None:
    if value:
        from edgetl import __version__

        console.print(f"edgetl {__version__}", markup=False)
        raise typer.Exit()


# --- finetune ---------------------------------------------------------------------------------------
from edgetl.choices import Baseline, DistBackend, Strategy  # noqa: E402


@app.command()
def finetune(
    data: Path = typer.Argument(..., help="ImageFolder: DATA/train/<class>, DATA/val/<class>, or DATA/<class> (split)"),
    out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="run directory to write"),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings (e.g. a run's config.yaml); options "
                                          "given here override it"),
    model: Optional[str] = typer.Option(None, help="timm model name [default: resnet50]"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="hub weights via timm [default: on]"),
    weights: Optional[str] = typer.Option(None, help="local weights: .safetensors, .pth or an edgetl run dir"),
    strategy: Optional[Strategy] = typer.Option(None, help="linear | partial | full | lp-ft (linear probe, then full "
                                                "at lr x backbone-lr-scale) [default: full]"),
    lp_epochs: Optional[int] = typer.Option(None, help="with --strategy lp-ft: linear-probe epochs [default: half]"),
    baseline: Optional[Baseline] = typer.Option(None, help="scratch: also train the from-scratch twin (same data, "
                                                    "recipe, budget) in RUN/baseline-scratch and report the gain; "
                                                    "probe: also fit a logistic regression on the source's frozen "
                                                    "pooled features (seconds) and warn when the fine-tune ends below it"),
    unfreeze: Optional[int] = typer.Option(None, help="with --strategy partial: last N stages trained [default: 1]"),
    epochs: Optional[int] = typer.Option(None, help="[default: 10]"),
    batch_size: Optional[int] = typer.Option(None, help="the global batch, over all processes and accumulation "
                                             "steps [default: 32]"),
    lr: Optional[float] = typer.Option(None, help="head learning rate, for the global batch (never scaled with "
                                       "the process count) [default: 1e-3]"),
    backbone_lr_scale: Optional[float] = typer.Option(None, help="backbone lr = lr x this [default: 0.1]"),
    linear_lr_scale: Optional[float] = typer.Option(None, help="head-only phases (--strategy linear, lp-ft's "
                                                   "probe) train at lr x this [default: 30]"),
    linear_augment: Optional[bool] = typer.Option(None, "--linear-augment/--no-linear-augment",
                                                  help="augment in head-only phases too [default: off: they see "
                                                  "the images as evaluation does]"),
    layer_decay: Optional[float] = typer.Option(None, help="timm layer-wise lr decay instead of one backbone scale"),
    weight_decay: Optional[float] = typer.Option(None, help="[default: 0.05]"),
    warmup_epochs: Optional[float] = typer.Option(None, help="[default: 1]"),
    label_smoothing: Optional[float] = typer.Option(None, help="[default: 0.1]"),
    freeze_bn_stats: Optional[bool] = typer.Option(None, "--freeze-bn-stats/--train-bn-stats",
                                                   help="BatchNorm keeps the source's running statistics while its "
                                                   "weights train (from scratch it always learns them) [default: "
                                                   "freeze]"),
    img_size: Optional[int] = typer.Option(None, min=IMG_SIZE_MIN, max=IMG_SIZE_MAX,
                                           help="input size [default: the model's pretrained size]"),
    augment: Optional[str] = typer.Option(None, help="none | crop | flip | strong, or an albumentations YAML [default: flip]"),
    val_fraction: Optional[float] = typer.Option(None, help="val share when DATA has no train/val split [default: 0.2]"),
    seed: Optional[int] = typer.Option(None, min=0, max=SEED_MAX, help="[default: 0]"),
    workers: Optional[int] = typer.Option(None, help="data loader processes [default: 2]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N] (under torchrun: auto | cpu | cuda) "
                                         "[default: auto]"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="mixed precision on GPU [default: on]"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model [default: off]"),
    patience: Optional[int] = typer.Option(None, help="early stopping after N epochs without improvement"),
    skip_bad_images: Optional[bool] = typer.Option(None, "--skip-bad-images", help="skip unreadable images and list them"),
    accumulate: Optional[int] = typer.Option(None, help="gradient accumulation: micro-batches per optimizer step "
                                             "[default: 1]"),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help="under torchrun on GPUs: "
                                           "SyncBatchNorm across processes [default: off]"),
    dist_backend: Optional[DistBackend] = typer.Option(None, help="under torchrun: auto (nccl on CUDA, gloo on the "
                                                       "CPU) | nccl | gloo [default: auto]"),
    dist_timeout: Optional[float] = typer.Option(None, callback=lambda v: _positive_seconds(v, DIST_TIMEOUT_MAX),
                                                 help="under torchrun: seconds to wait for another process "
                                                 "before stopping [default: 1800]"),
    check: Optional[CheckMode] = typer.Option(None, "--check", help="check every image before training: full "
                                              "(decode; cached per file, so a second run checks only what changed) | "
                                              "header (open only, fast) | none; an image failing later is skipped "
                                              "and listed in RUN/bad_images.json [default: full]"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
) -> None:
    """Fine-tune a pretrained timm backbone on an image folder; writes the run directory. Under torchrun
    (`torchrun --nproc_per_node N -m edgetl finetune ...`) it trains with DistributedDataParallel: docs/multi-gpu.md."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.errors import EdgetlError
    from edgetl.finetune import FinetuneSettings, finetune as run_finetune
    from edgetl.finetune.distributed import StoppedByPeer, World
    from edgetl.presentation.finetune import finetune_events, render_finetune
    from edgetl.stage import load_settings

    overrides = {k: v for k, v in given.items() if k not in ("config", "resume", "overwrite", "out")}
    overrides["data"] = str(data)
    if World.from_env().is_main:
        cfg = load_settings(FinetuneSettings, config, overrides)
        with finetune_events() as events:
            result = run_finetune(out, cfg, events, resume=resume, overwrite=overwrite)
        render_finetune(out, result)
        return
    # Another process under torchrun: rank 0 reports progress, the result, and every failure the processes share
    # (a bad setting or file, Ctrl-C); this one speaks only for what happened to it alone.
    try:
        cfg = load_settings(FinetuneSettings, config, overrides)
    except EdgetlError as e:
        raise typer.Exit(e.exit_code) from None
    try:
        run_finetune(out, cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except StoppedByPeer as e:
        raise typer.Exit(e.exit_code) from None
    except EdgetlError as e:
        if not e.message.startswith("rank "):
            e.message = f"rank {World.from_env().rank}: {e.message}"
        raise


# --- eval -------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    config: Optional[Path] = typer.Option(None, help="YAML file of eval settings; options given here override it"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder DIR/<class>/* [default: the run's own val split]"),
    backend: Optional[BackendChoice] = typer.Option(None, help="which runtime scores [default: torch]"),
    precision: Optional[PrecisionChoice] = typer.Option(None, help="which model file of the run [default: fp32]"),
    device: Optional[DeviceChoice] = typer.Option(None, help="[default: cpu] (tensorrt always runs on the GPU)"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="[default: 64]"),
    json_out: Optional[Path] = typer.Option(None, "--json", dir_okay=False, help="also write the metrics here"),
) -> None:
    """Score a run's model on a folder with top-1/top-5/F1/AUC and the confusion matrix."""
    from edgetl.evaluate import EvalSettings, eval_run
    from edgetl.presentation.eval import render_eval
    from edgetl.presentation.events import RichEvents
    from edgetl.stage import load_settings

    overrides = {"data": str(data) if data else None, "backend": backend, "precision": precision, "device": device,
                 "batch_size": batch_size, "json_path": str(json_out) if json_out else None}
    cfg = load_settings(EvalSettings, config, overrides)
    with RichEvents() as events:
        result = eval_run(run, cfg, events)
    render_eval(result)


# --- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    config: Optional[Path] = _config_option(),
    out: Optional[Path] = typer.Option(None, help="where the demo writes its data and runs [default: runs/demo]"),
    epochs: Optional[int] = typer.Option(None, help="epochs per target run [default: 10]"),
    img_size: Optional[int] = typer.Option(None, min=IMG_SIZE_MIN, max=IMG_SIZE_MAX,
                                           help="the 8x8 digits are upscaled to this [default: 32]"),
    shots: Optional[int] = typer.Option(None, help="labelled images per target class [default: 10]"),
    seeds: Optional[int] = typer.Option(None, help="repeats, each with its own labelled images and initialisation "
                                        "[default: 3]"),
    strategy: Optional[str] = typer.Option(None, help="linear | partial | full | lp-ft [default: full]"),
) -> None:
    """The whole chain on scikit-learn's digits (no download): transfer from an ImageNet EfficientNet-Lite0 vs
    training from scratch, then export, quantization, a TensorRT-RTX build and the benchmark of what this machine
    can run."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.demo import DemoSettings, demo as run_demo
    from edgetl.presentation.demo import demo_events
    from edgetl.stage import load_settings

    cfg = load_settings(DemoSettings, config, _overrides(given, "out"))
    with demo_events() as events:
        run_demo(out or Path("runs/demo"), cfg, events)


# --- export (issue 3) -------------------------------------------------------------------------------
@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="run directory (holds model.safetensors and splits.json)"),
    config: Optional[Path] = typer.Option(None, help="YAML file of export settings; options given here override it"),
    opset: Optional[int] = typer.Option(None, help="ONNX opset; 17 parses on TensorRT 8.5+, 10.x (JetPack 6) and "
                                                   "11.x [default: 17]"),
    static_batch: Optional[int] = typer.Option(None, help="fix the batch dimension to N [default: dynamic]"),
    fuse_preprocess: Optional[bool] = typer.Option(None, "--fuse-preprocess/--no-fuse-preprocess",
                                                   help="graph takes uint8 NHWC RGB and normalises it itself "
                                                        "[default: off]"),
    tolerance: Optional[float] = typer.Option(None, help="largest |delta logit| vs PyTorch that passes [default: 1e-4]"),
    simplify: Optional[bool] = typer.Option(None, "--simplify/--no-simplify",
                                            help="onnxslim pass, kept only if parity holds [default: on]"),
    parity_images: Optional[int] = typer.Option(None, help="validation images compared with PyTorch [default: 64]"),
) -> None:
    """Export the run's model to RUN/model.onnx, checked against PyTorch on real validation images."""
    from edgetl.export import ExportSettings, export
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.export import render_export
    from edgetl.stage import load_settings

    overrides = {"opset": opset, "static_batch": static_batch, "fuse_preprocess": fuse_preprocess,
                 "tolerance": tolerance, "simplify": simplify, "parity_images": parity_images}
    cfg = load_settings(ExportSettings, config, overrides)
    with lock_run(run, "export"), RichEvents() as events:
        result = export(run, cfg, events)
    render_export(result)


# --- end export -------------------------------------------------------------------------------------

# --- quantize (issue 4, stage shape: issue 11) ---------------------------------------------------------
@app.command()
def quantize(
    run: Path = typer.Argument(..., help="run directory with model.onnx (from `edgetl export`)"),
    config: Optional[Path] = typer.Option(None, "--config", dir_okay=False,
                                          help="YAML file of settings (e.g. RUN/settings/quantize.yaml); options "
                                          "given here win"),
    precision: Optional[QuantPrecision] = typer.Option(None, help="int8 (Q/DQ) or fp16 [default: int8]"),
    target: Optional[QuantTarget] = typer.Option(None, help="int8 form: tensorrt (S8S8 Q/DQ), cpu (U8S8, fast on "
                                                 "x86) or both [default: tensorrt]"),
    calib: Optional[Path] = typer.Option(None, help="calibration ImageFolder DIR/<class>/* [default: the run's "
                                         "train split]"),
    calib_size: Optional[int] = typer.Option(None, help="calibration images, stratified by class (all if fewer) "
                                             "[default: 256]"),
    method: Optional[CalibMethod] = typer.Option(None, help="calibration method; auto tries the three and keeps "
                                                 "the best [default: minmax]"),
    percentile: Optional[float] = typer.Option(None, help="with --method percentile [default: 99.999]"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder to score on [default: the run's val split]"),
    max_drop: Optional[float] = typer.Option(None, help="top-1 points the int8 model may lose; beyond, sensitive "
                                             "layers stay float [default: 1.0]"),
    batch_size: Optional[int] = typer.Option(None, help="calibration batch [default: 32]"),
    seed: Optional[int] = typer.Option(None, min=0, max=SEED_MAX, help="seed of the calibration sample [default: 0]"),
    threads: Optional[int] = typer.Option(None, help="onnxruntime threads for scoring [default: all cores]"),
) -> None:
    """Bake INT8 (Q/DQ) or FP16 into the ONNX graph and score it against fp32 -> quant_report.json."""
    given = dict(locals())  # first statement: only the options
    from edgetl.errors import QuantizeBudgetMissed
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.quantize import render_quantize
    from edgetl.quantize import QuantizeSettings, quantize as run_quantize
    from edgetl.stage import load_settings

    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if k not in ("run", "config")}
    cfg = load_settings(QuantizeSettings, config, overrides)
    try:
        with lock_run(run, "quantize"), RichEvents() as events:
            result = run_quantize(run, cfg, events)
    except QuantizeBudgetMissed as e:  # written and recorded: show the table, then main() gives exit code 3
        render_quantize(e.result)
        raise
    render_quantize(result)


# --- end quantize -----------------------------------------------------------------------------------

# --- build / bench (issue 5) ------------------------------------------------------------------------
@app.command("build")
def build_cmd(
    run: Path = typer.Argument(..., help="run directory (holds model.onnx / model.fp16.onnx / model.int8.onnx)"),
    config: Optional[Path] = _config_option(),
    precision: Optional[EnginePrecision] = typer.Option(None, help="which precision-baked ONNX to build "
                                                       "[default: fp32]"),
    batch: Optional[str] = typer.Option(None, help="optimisation profile MIN,OPT,MAX of the batch axis, or one fixed N "
                                                   "[default: 1,1,32]"),
    workspace: Optional[int] = typer.Option(None, help="builder workspace limit, MiB [default: 1024]"),
    opt_level: Optional[int] = typer.Option(None, help="builder optimisation level 0..5 (higher: longer build, maybe "
                                                       "faster) [default: 3]"),
    version_compatible: Optional[bool] = typer.Option(None, "--version-compatible/--no-version-compatible",
                                                      help="engine runs on later TensorRT of the same major (lean "
                                                      "runtime) [default: off]"),
    dla_core: Optional[int] = typer.Option(None, help="build for this DLA core (Jetson Orin/Xavier), GPU fallback on"),
    timing_cache: Optional[bool] = typer.Option(None, "--timing-cache/--no-timing-cache",
                                                help="reuse and update RUN/engines/<gpu>-trt<ver>/timing.cache "
                                                "[default: on]"),
    target: Optional[BuildTarget] = typer.Option(None, help="tensorrt: TensorRT, for this GPU | rtx: TensorRT for RTX, "
                                                 "ahead of time, GPU or not [default: tensorrt]"),
    compute_capability: Optional[str] = typer.Option(None, help="--target rtx: compute capabilities of the RTX GPUs "
                                                                "to build for [default: 8.6,8.9,12.0]"),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="let fp32 layers compute in TF32 on Ampere or "
                                        "later [default: off]"),
    onnx: Optional[Path] = typer.Option(None, help="build this ONNX file instead of the run's model.<precision>.onnx"),
) -> None:
    """Build a TensorRT (or TensorRT-RTX) engine (strongly typed; precision comes from the ONNX graph)."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.build import BuildSettings, build
    from edgetl.presentation.build import render_build
    from edgetl.presentation.events import RichEvents
    from edgetl.stage import load_settings

    cfg = load_settings(BuildSettings, config, _overrides(given, "run"))
    with lock_run(run, "build"), RichEvents() as events:
        result = build(run, cfg, events)
    render_build(result)


@app.command("bench")
def bench_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    config: Optional[Path] = typer.Option(None, help="YAML file of bench settings; options given here override it"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder DIR/<class>/* [default: the run's own val split]"),
    backends: Optional[str] = typer.Option(None, help="comma list of torch, onnxruntime, tensorrt "
                                                      "[default: torch,onnxruntime,tensorrt]"),
    precisions: Optional[str] = typer.Option(None, help="comma list of fp32, fp16, bf16, int8 [default: every model file the run has]"),
    batch_sizes: Optional[str] = typer.Option(None, help="comma list, e.g. 1,8 [default: 1]"),
    iterations: Optional[int] = typer.Option(None, min=1, help="timed iterations per row [default: 100]"),
    duration: Optional[float] = typer.Option(None, callback=lambda v: _positive_seconds(v),
                                             help="time each row for S seconds instead of --iterations"),
    warmup: Optional[int] = typer.Option(None, min=0, help="untimed iterations first [default: 10]"),
    device: Optional[DeviceChoice] = typer.Option(None, help="torch and onnxruntime rows; tensorrt always runs on "
                                                             "the GPU [default: cpu]"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch and onnxruntime"),
    limit: Optional[int] = typer.Option(None, min=1, help="score top-1 on the first N images only"),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                              help="tensorrt rows replay a CUDA graph [default: off]"),
) -> None:
    """Latency (mean/p50/p90/p99, throughput) and top-1 per backend x precision x batch size; writes
    RUN/bench.json, bench.md and bench.png."""
    from edgetl.bench import BenchSettings, bench
    from edgetl.presentation.bench import render_bench
    from edgetl.presentation.events import RichEvents
    from edgetl.stage import load_settings

    overrides = {"data": str(data) if data else None, "backends": backends, "precisions": precisions,
                 "batch_sizes": batch_sizes, "iterations": iterations, "duration": duration, "warmup": warmup,
                 "device": device, "threads": threads, "limit": limit, "cuda_graph": cuda_graph}
    cfg = load_settings(BenchSettings, config, overrides)
    with lock_run(run, "bench"), RichEvents() as events:
        result = bench(run, cfg, events)
    render_bench(result)
    console.print(f"wrote {_bench_files(run)}", markup=False)


def _bench_files(run: Path) -> str:
    from edgetl.rundir import RunDir

    r = RunDir(run)
    return ", ".join(str(p) for p in (r.bench_json, r.bench_md, r.bench_png))


# --- end build / bench ------------------------------------------------------------------------------

# --- deploy / bundle / triton (issue 6) -------------------------------------------------------------
@app.command("bundle")
def bundle_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    config: Optional[Path] = _config_option(),
    precision: Optional[EnginePrecision] = typer.Option(None, help="which precision-baked ONNX file to ship "
                                                       "[default: fp32]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", dir_okay=False,
                                       help="also write this .tar.gz (for offline devices)"),
    tar: Optional[bool] = typer.Option(None, "--tar/--no-tar", help="also write RUN/bundles/<run>-<precision>.tar.gz "
                                       "[default: off]"),
    max_images: Optional[int] = typer.Option(None, help="validation images carried (preprocessed) for the device's "
                                             "accuracy [default: 256]"),
) -> None:
    """Pack what a device needs: ONNX, model card, preprocessed eval images, entry point, SHA-256 manifest."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.bundle import BundleSettings, bundle
    from edgetl.presentation.bundle import render_bundle
    from edgetl.presentation.events import RichEvents
    from edgetl.stage import load_settings

    cfg = load_settings(BundleSettings, config, _overrides(given, "run"))
    with lock_run(run, "bundle"), RichEvents() as events:
        result = bundle(run, cfg, events)
    render_bundle(result)


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run directory"),
    host: Optional[List[str]] = typer.Option(None, "--host", help="ssh destination: user@host, user@host:port or a Host "
                                             "alias of ~/.ssh/config; repeatable: several devices deploy in parallel"),
    hosts: Optional[Path] = typer.Option(None, "--hosts", dir_okay=False, help="file of destinations, one a line "
                                         "(user@host or user@host:port), # comments; deploys to all of them"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, max=FLEET_JOBS_MAX, help="devices deployed at once [default: 4]"),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings; options given here override it"),
    precision: Optional[EnginePrecision] = typer.Option(None, help="[default: fp32]"),
    bench: Optional[bool] = typer.Option(None, "--bench", help="benchmark on the device and fetch bench.json"),
    backend: Optional[DeployBackend] = typer.Option(None, help="tensorrt (engine built on the device) | onnxruntime "
                                                    "[default: tensorrt]"),
    remote_dir: Optional[str] = typer.Option(None, help="bundles go to REMOTE_DIR/<run>/<bundle-hash>/ on the device "
                                             "[default: ~/edgetl]"),
    python: Optional[str] = typer.Option(None, help="the device's Python interpreter (one with numpy) [default: python3]"),
    port: Optional[int] = typer.Option(None, "--port", help="ssh port where a destination names none (ssh -p)"),
    identity: Optional[Path] = typer.Option(None, "--identity", help="private key file (ssh -i, IdentitiesOnly)"),
    ssh_option: Optional[List[str]] = typer.Option(None, "--ssh-option", help="extra ssh argument, repeatable "
                                                   "(e.g. --ssh-option=-oProxyJump=gateway)"),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", help="repeatable [default: 1 and 8]"),
    warmup: Optional[int] = typer.Option(None, help="untimed runs per batch size [default: 10]"),
    iterations: Optional[int] = typer.Option(None, help="timed runs per batch size [default: 100]"),
    max_images: Optional[int] = typer.Option(None, help="validation images carried for the accuracy check [default: 256]"),
    device: Optional[DeployDevice] = typer.Option(None, help="onnxruntime backend: auto | cpu | cuda [default: auto]"),
    build: Optional[bool] = typer.Option(None, "--build/--no-build", help="build the TensorRT engine on the device "
                                         "[default: build]"),
    force: Optional[bool] = typer.Option(None, "--force", help="replace a bundle on the device that no longer verifies"),
) -> None:
    """Ship a run to a device (or many) over ssh, build the engine there, benchmark there, fetch the results.
    Several --host (or --hosts FILE) deploy in parallel and write RUN/fleet.json, fleet.md and fleet.png; exit
    code 4 when some devices failed (the others' results are written)."""
    from edgetl.deploy import DeploySettings, deploy
    from edgetl.errors import FleetIncomplete
    from edgetl.fleet import deploy_fleet
    from edgetl.presentation.deploy import FleetEvents, render_deploy, render_fleet
    from edgetl.presentation.events import RichEvents
    from edgetl.stage import load_settings

    overrides = dict(hosts=host or None, hosts_file=str(hosts) if hosts else None, jobs=jobs, precision=precision,
                     bench=bench, backend=backend, remote_dir=remote_dir, python=python, port=port,
                     identity=str(identity) if identity else None, ssh_options=ssh_option or None,
                     batch_sizes=batch_size or None, warmup=warmup, iterations=iterations, max_images=max_images,
                     device=device, build=build, force=force)
    cfg = load_settings(DeploySettings, config, overrides)
    if not cfg.hosts and cfg.hosts_file is None:
        usage_error = _typer_and_click("UsageError")[0]
        raise usage_error("Missing option '--host' (or --hosts FILE, or hosts: in --config)", ctx)
    if cfg.hosts_file is None and len(cfg.hosts) == 1:  # one device: today's steps and output
        with RichEvents() as events:
            result = deploy(run, cfg, events)
        render_deploy(result, run)
        return
    with FleetEvents() as events:
        fleet = deploy_fleet(run, cfg, events)
    render_fleet(fleet)
    if fleet.failed:
        raise FleetIncomplete(f"{len(fleet.failed)} of {len(fleet.hosts)} devices failed: "
                              + ", ".join(h.host for h in fleet.failed),
                              f"their reasons are above and in {run / 'fleet.md'}; the others' results are written")


@app.command("triton")
def triton_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    config: Optional[Path] = _config_option(),
    out: Optional[Path] = typer.Option(None, "--out", "-o", file_okay=False,
                                       help="model repository folder [default: RUN/triton]"),
    precision: Optional[EnginePrecision] = typer.Option(None, help="[default: fp32]"),
    max_batch: Optional[int] = typer.Option(None, help="max_batch_size, the dynamic batcher's upper bound [default: 8]"),
    name: Optional[str] = typer.Option(None, help="model name [default: the run folder's name]"),
    kind: Optional[TritonKind] = typer.Option(None, help="instance kind for the ONNX model [default: gpu]"),
    queue_delay_us: Optional[int] = typer.Option(None, help="dynamic batching: max queue delay in microseconds "
                                                 "[default: 100]"),
) -> None:
    """Write a Triton Inference Server model repository (ONNX model, and the TensorRT engine where one was built)."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.triton import render_triton
    from edgetl.stage import load_settings
    from edgetl.triton import TritonSettings, triton

    cfg = load_settings(TritonSettings, config, _overrides(given, "run"))
    with lock_run(run, "triton"), RichEvents() as events:
        result = triton(run, cfg, events)
    render_triton(result)


# --- end deploy -------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
