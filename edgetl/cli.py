"""The `edgetl` command line: one thin command per stage. Logic lives in the stage modules."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgetl.choices import DeployBackend, DeployDevice, EnginePrecision
from edgetl.presentation.console import console, err_console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
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
    finally:
        restore()


def _print_error(message: str, hint: Optional[str], label: str = "error: ") -> None:
    """Markup off: a message may hold [brackets] (paths, lists) that rich would eat or choke on."""
    from rich.text import Text

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


# Image sizes a CNN/ViT input sensibly has; beyond, decoding and resizing run out of memory before training.
IMG_SIZE_MIN, IMG_SIZE_MAX = 16, 2048


def _positive_seconds(value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and value > 0):  # nan passes every `<` test: check it
        raise typer.BadParameter(f"{value}: give a number of seconds > 0")
    return value


def _print_version(value: bool) -> None:
    if value:
        from edgetl import __version__

        console.print(f"edgetl {__version__}", markup=False)
        raise typer.Exit()


# --- finetune ---------------------------------------------------------------------------------------
@app.command()
def finetune(
    data: Path = typer.Argument(..., help="ImageFolder: DATA/train/<class>, DATA/val/<class>, or DATA/<class> (split)"),
    out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="run directory to write"),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings; options given here override it"),
    model: Optional[str] = typer.Option(None, help="timm model name [default: resnet50]"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="hub weights via timm [default: on]"),
    weights: Optional[str] = typer.Option(None, help="local weights: .safetensors, .pth or an edgetl run dir"),
    strategy: Optional[str] = typer.Option(None, help="linear | partial | full | lp-ft (linear probe, then full "
                                           "at lr x backbone-lr-scale) [default: full]"),
    lp_epochs: Optional[int] = typer.Option(None, help="with --strategy lp-ft: linear-probe epochs [default: half]"),
    baseline: Optional[str] = typer.Option(None, help="scratch: also train the from-scratch twin (same data, recipe, "
                                           "budget) in RUN/baseline-scratch and report the gain"),
    unfreeze: Optional[int] = typer.Option(None, help="with --strategy partial: last N stages trained [default: 1]"),
    epochs: Optional[int] = typer.Option(None, help="[default: 10]"),
    batch_size: Optional[int] = typer.Option(None, help="[default: 32]"),
    lr: Optional[float] = typer.Option(None, help="head learning rate [default: 1e-3]"),
    backbone_lr_scale: Optional[float] = typer.Option(None, help="backbone lr = lr x this [default: 0.1]"),
    layer_decay: Optional[float] = typer.Option(None, help="timm layer-wise lr decay instead of one backbone scale"),
    weight_decay: Optional[float] = typer.Option(None, help="[default: 0.05]"),
    warmup_epochs: Optional[float] = typer.Option(None, help="[default: 1]"),
    label_smoothing: Optional[float] = typer.Option(None, help="[default: 0.1]"),
    img_size: Optional[int] = typer.Option(None, min=IMG_SIZE_MIN, max=IMG_SIZE_MAX,
                                           help="input size [default: the model's pretrained size]"),
    augment: Optional[str] = typer.Option(None, help="none | crop | flip | strong, or an albumentations YAML [default: flip]"),
    val_fraction: Optional[float] = typer.Option(None, help="val share when DATA has no train/val split [default: 0.2]"),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    workers: Optional[int] = typer.Option(None, help="data loader processes [default: 2]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N] [default: auto]"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="mixed precision on GPU [default: on]"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model [default: off]"),
    patience: Optional[int] = typer.Option(None, help="early stopping after N epochs without improvement"),
    skip_bad_images: Optional[bool] = typer.Option(None, "--skip-bad-images", help="skip unreadable images and list them"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
) -> None:
    """Fine-tune a pretrained timm backbone on an image folder; writes the run directory."""
    given = dict(locals())  # first statement: only the options, before any import adds names
    from edgetl.config import FinetuneConfig, load_config
    from edgetl.finetune import finetune as run_finetune
    from edgetl.presentation.console import finetune_events

    overrides = {k: v for k, v in given.items() if k not in ("config", "resume", "overwrite")}
    overrides["data"], overrides["out"] = str(data), str(out)
    cfg = load_config(FinetuneConfig, config, overrides)
    with finetune_events() as events:
        run_finetune(cfg, resume=resume, overwrite=overwrite, events=events)


# --- eval -------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder DIR/<class>/* [default: the run's own val split]"),
    backend: str = typer.Option("torch", help="torch | onnxruntime | tensorrt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (which model file of the run)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    batch_size: int = typer.Option(64, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json", dir_okay=False, help="also write the metrics here"),
) -> None:
    """Score a run's model on a folder with top-1/top-5/F1/AUC and the confusion matrix."""
    from edgetl.evaluate import eval_run
    from edgetl.presentation.console import print_metrics

    with console.status("evaluating"):
        metrics = eval_run(run, data=data, backend=backend, precision=precision, device=device, batch_size=batch_size)
    print_metrics(metrics)
    if json_out is not None:
        from edgetl.io import write_json

        write_json(json_out, metrics)


# --- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes its data and runs"),
    epochs: Optional[int] = typer.Option(None, help="epochs per target run [default: 50 optimiser steps' worth]"),
    model: str = typer.Option("test_resnet", help="timm model name (test_resnet: a 0.4 M-parameter ResNet)"),
    img_size: int = typer.Option(16, min=IMG_SIZE_MIN, max=IMG_SIZE_MAX,
                                 help="digits are 8x8 pixels; 16 px keeps all of them"),
    shots: int = typer.Option(10, help="labelled images per target class"),
    seeds: int = typer.Option(3, help="repeats, each with its own labelled images and initialisation"),
    source: str = typer.Option("rotation", help="rotation (self-supervised, no labels) | digits04 (supervised)"),
    strategy: str = typer.Option("full", help="linear | partial | full | lp-ft"),
) -> None:
    """The whole chain on scikit-learn's digits (no download): transfer learning vs training from scratch,
    then export, quantization and the benchmark of what this machine can run."""
    from edgetl.demo import run_demo

    run_demo(out, epochs=epochs, model=model, img_size=img_size, shots=shots, seeds=seeds, source=source,
             strategy=strategy)


# --- export (issue 3) -------------------------------------------------------------------------------
@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="run directory (holds model.safetensors and splits.json)"),
    opset: int = typer.Option(17, help="ONNX opset; 17 parses on TensorRT 8.5+, 10.x (JetPack 6) and 11.x"),
    static_batch: Optional[int] = typer.Option(None, help="fix the batch dimension to N [default: dynamic]"),
    fuse_preprocess: bool = typer.Option(False, "--fuse-preprocess",
                                         help="graph takes uint8 NHWC RGB and normalises it itself"),
    tolerance: float = typer.Option(1e-4, help="largest |delta logit| vs PyTorch that passes"),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="onnxslim pass, kept only if parity holds"),
    parity_images: int = typer.Option(64, help="validation images compared with PyTorch"),
) -> None:
    """Export the run's model to RUN/model.onnx, checked against PyTorch on real validation images."""
    from edgetl.export import export, print_report
    from edgetl.io import read_json
    from edgetl.rundir import RunDir

    with console.status("exporting") as status:
        export(run, opset=opset, static_batch=static_batch, fuse_preprocess=fuse_preprocess, tolerance=tolerance,
               simplify=simplify, parity_images=parity_images, on_step=lambda msg: status.update(msg))
    print_report(read_json(RunDir(run).export_report))


# --- end export -------------------------------------------------------------------------------------

# --- quantize (issue 4) -----------------------------------------------------------------------------
@app.command()
def quantize(
    run: Path = typer.Argument(..., help="run directory with model.onnx (from `edgetl export`)"),
    precision: str = typer.Option("int8", help="int8 | fp16"),
    target: str = typer.Option("tensorrt", help="int8 form: tensorrt (S8S8 Q/DQ) | cpu (U8S8, fast on x86) | both"),
    calib: Optional[Path] = typer.Option(None, help="calibration ImageFolder DIR/<class>/* [default: the run's train split]"),
    calib_size: int = typer.Option(256, help="calibration images, stratified by class (all if fewer)"),
    method: str = typer.Option("minmax", help="minmax | entropy | percentile | auto (try all, keep the best)"),
    percentile: float = typer.Option(99.999, help="with --method percentile"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder to score on [default: the run's val split]"),
    max_drop: float = typer.Option(1.0, help="top-1 points the int8 model may lose; beyond, sensitive layers stay float"),
    batch_size: int = typer.Option(32, help="calibration batch"),
    seed: int = typer.Option(0, help="seed of the calibration sample"),
) -> None:
    """Bake INT8 (Q/DQ) or FP16 into the ONNX graph and score it against fp32 -> quant_report.json."""
    from edgetl.quantize import QuantizeRequest, quantize as run_quantize
    from edgetl.presentation.console import progress_callback

    request = QuantizeRequest(precision=precision, target=target, calib=str(calib) if calib else None,
                              calib_size=calib_size, method=method, percentile=percentile,
                              data=str(data) if data else None, max_drop=max_drop, batch_size=batch_size, seed=seed)
    from edgetl.errors import QuantizeBudgetMissed

    try:
        with progress_callback("calibrating") as progress:
            result = run_quantize(run, request, log=lambda m: console.print(m, markup=False, soft_wrap=True),
                                  progress=progress)
    except QuantizeBudgetMissed as e:  # written and recorded: show the table, then main() gives exit code 3
        _print_quant_entries(e.result.get("entries", {}))
        raise
    _print_quant_entries(result["entries"])
    console.print(f"report: {result['report']}", markup=False)


def _print_quant_entries(entries: dict) -> None:
    from rich.table import Table

    table = Table(title="quantized vs fp32 (onnxruntime, CPU)")
    for col in ("model", "fp32 top-1", "top-1", "drop pt", "method", "calib", "float layers"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right", no_wrap=col == "model")
    notes = []
    for e in entries.values():
        top1, drop = e.get("top1"), e.get("drop")
        table.add_row(e["model_file"], f"{e['fp32_top1'] * 100:.2f}", "n/a" if top1 is None else f"{top1 * 100:.2f}",
                      "n/a" if drop is None else f"{drop:+.2f}", e.get("method") or "-",
                      str(e.get("calib_size") or "-"), str(len(e.get("excluded") or [])))
        if e.get("cpu_note"):
            notes.append(f"{e['model_file']}: {e['cpu_note']}")
        if e.get("parity"):
            p = e["parity"]
            notes.append(f"{e['model_file']}: parity {'ok' if e.get('parity_ok') else 'FAILED'} (max |delta logit| "
                         f"{p['max_abs_logit_delta']:.3g} <= {p['tolerance']:.3g}, top-1 agreement "
                         f"{p['top1_agreement'] * 100:.1f}%)")
        if drop is not None and not e.get("within_max_drop", True):
            notes.append(f"{e['model_file']}: drop {drop:.2f} pt is above --max-drop {e['max_drop']}")
        for x in e.get("excluded") or []:
            notes.append(f"{e['model_file']}: kept {x['node']} in float (+{x['gain']:.2f} pt)")
    console.print(table)
    for line in notes:
        console.print(line, markup=False, soft_wrap=True)


# --- end quantize -----------------------------------------------------------------------------------

# --- build / bench (issue 5) ------------------------------------------------------------------------
@app.command("build")
def build_cmd(
    run: Path = typer.Argument(..., help="run directory (holds model.onnx / model.fp16.onnx / model.int8.onnx)"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8: which precision-baked ONNX to build"),
    batch: str = typer.Option("1,1,32", help="optimisation profile MIN,OPT,MAX of the batch axis, or one fixed N"),
    workspace: int = typer.Option(1024, help="builder workspace limit, MiB"),
    opt_level: int = typer.Option(3, help="builder optimisation level 0..5 (higher: longer build, maybe faster)"),
    version_compatible: bool = typer.Option(False, "--version-compatible",
                                            help="engine runs on later TensorRT of the same major (lean runtime)"),
    dla_core: Optional[int] = typer.Option(None, help="build for this DLA core (Jetson Orin/Xavier), GPU fallback on"),
    timing_cache: bool = typer.Option(True, "--timing-cache/--no-timing-cache",
                                      help="reuse and update RUN/engines/<gpu>-trt<ver>/timing.cache"),
    target: str = typer.Option("tensorrt", help="tensorrt: TensorRT, for this GPU | rtx: TensorRT for RTX, "
                                                "ahead of time, GPU or not"),
    compute_capability: Optional[str] = typer.Option(None, help="--target rtx: compute capabilities of the RTX GPUs "
                                                                "to build for (default 8.6,8.9,12.0)"),
    tf32: bool = typer.Option(False, "--tf32", help="let fp32 layers compute in TF32 on Ampere or later"),
    onnx: Optional[Path] = typer.Option(None, help="build this ONNX file instead of the run's model.<precision>.onnx"),
) -> None:
    """Build a TensorRT (or TensorRT-RTX) engine (strongly typed; precision comes from the ONNX graph)."""
    from edgetl.build import build

    with console.status("building engine") as status:
        result = build(run, precision=precision, batch=batch, workspace_mib=workspace, opt_level=opt_level,
                       version_compatible=version_compatible, dla_core=dla_core, timing_cache=timing_cache,
                       log=lambda msg: status.update(msg), target=target, compute_capabilities=compute_capability,
                       tf32=tf32, onnx_file=onnx)
    for line in result.warnings:
        console.print(f"warning: {line}", markup=False, soft_wrap=True)
    console.print(f"engine: {result.plan} ({result.seconds:.1f} s, {result.layers} network layers)\n"
                  f"sidecar: {result.sidecar}", markup=False, soft_wrap=True)
    if result.trtexec:
        console.print(f"same build with trtexec:\n  {result.trtexec}", markup=False, soft_wrap=True)


@app.command("bench")
def bench_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder DIR/<class>/* [default: the run's own val split]"),
    backends: str = typer.Option("torch,onnxruntime,tensorrt", help="comma list: torch, onnxruntime, tensorrt"),
    precisions: Optional[str] = typer.Option(None, help="comma list of fp32, fp16, bf16, int8 [default: every model file the run has]"),
    batch_sizes: str = typer.Option("1", help="comma list, e.g. 1,8"),
    iterations: int = typer.Option(100, min=1, help="timed iterations per row"),
    duration: Optional[float] = typer.Option(None, callback=lambda v: _positive_seconds(v),
                                             help="time each row for S seconds instead of --iterations"),
    warmup: int = typer.Option(10, min=0, help="untimed iterations first"),
    device: str = typer.Option("cpu", help="cpu | cuda (torch and onnxruntime rows; tensorrt always runs on the GPU)"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch and onnxruntime"),
    limit: Optional[int] = typer.Option(None, min=1, help="score top-1 on the first N images only"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="tensorrt rows replay a CUDA graph"),
) -> None:
    """Latency (mean/p50/p90/p99, throughput) and top-1 per backend x precision x batch size; writes
    RUN/bench.json, bench.md and bench.png."""
    from edgetl.bench import bench_run
    from edgetl.report import print_bench

    result = bench_run(run, data=data, backends=backends, precisions=precisions, batch_sizes=batch_sizes,
                       warmup=warmup, iterations=iterations, duration=duration, device=device, threads=threads,
                       limit=limit, cuda_graph=cuda_graph)
    print_bench(result)
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
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8: which precision-baked ONNX file to ship"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", dir_okay=False,
                                       help="also write this .tar.gz (for offline devices)"),
    tar: bool = typer.Option(False, "--tar", help="also write RUN/bundles/<run>-<precision>.tar.gz"),
    max_images: int = typer.Option(256, help="validation images carried (preprocessed) for the device's accuracy"),
) -> None:
    """Pack what a device needs: ONNX, model card, preprocessed eval images, entry point, SHA-256 manifest."""
    from edgetl.bundle import make_bundle

    if tar and out is None:
        out = run / "bundles" / f"{run.resolve().name}-{precision}.tar.gz"
    with console.status("bundling"):
        b = make_bundle(run, precision, tarball=out, max_images=max_images)
    console.print(f"bundle {b.path} ({'unchanged' if b.reused else 'written'}), sha256 {b.sha256}", markup=False, soft_wrap=True)
    for rel in b.files:
        console.print(f"  {rel:<28} {b.manifest['files'][rel]['size']:>12,} B", markup=False)
    ref = b.manifest["reference"].get("top1")
    console.print(f"{b.manifest['data']['n']} eval images; fp32 PyTorch top-1 on them: "
                  f"{'n/a' if ref is None else f'{ref:.4f}'}", markup=False)
    if b.tarball is not None:
        console.print(f"tarball {b.tarball}  (on the device: tar xzf it, then python3 <dir>/edgetl_device.py verify)",
                      markup=False, soft_wrap=True)


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run directory"),
    host: Optional[List[str]] = typer.Option(None, "--host", help="ssh destination: user@host, user@host:port or a Host "
                                             "alias of ~/.ssh/config; repeatable: several devices deploy in parallel"),
    hosts: Optional[Path] = typer.Option(None, "--hosts", dir_okay=False, help="file of destinations, one a line "
                                         "(user@host or user@host:port), # comments; deploys to all of them"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="devices deployed at once [default: 4]"),
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
    out: Optional[Path] = typer.Option(None, "--out", "-o", file_okay=False,
                                       help="model repository folder [default: RUN/triton]"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8"),
    max_batch: int = typer.Option(8, help="max_batch_size, the dynamic batcher's upper bound"),
    name: Optional[str] = typer.Option(None, help="model name [default: the run folder's name]"),
    kind: str = typer.Option("gpu", help="instance kind for the ONNX model: gpu | cpu"),
    queue_delay_us: int = typer.Option(100, help="dynamic batching: max queue delay in microseconds"),
) -> None:
    """Write a Triton Inference Server model repository (ONNX model, and the TensorRT engine where one was built)."""
    from edgetl.triton import triton_repository

    repo = triton_repository(run, out, precision=precision, max_batch=max_batch, name=name, kind=kind,
                             queue_delay_us=queue_delay_us)
    for model in repo.models:
        console.print(f"{repo.path / model}  ({repo.backends[model]})", markup=False, soft_wrap=True)
    console.print(f"serve with: tritonserver --model-repository={repo.path.resolve()}", markup=False, soft_wrap=True)


# --- end deploy -------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
