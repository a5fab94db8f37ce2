"""`edgetl finetune`, `eval` and `demo`: thin commands, the logic lives in the stage modules."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from edgetl.choices import Backend as BackendChoice, Baseline, CheckMode, Device as DeviceChoice, DistBackend
from edgetl.choices import Precision as PrecisionChoice, Strategy
from edgetl.cli.command import stage
from edgetl.cli.options import (BATCH_SIZE, CONFIG, DATA, DEMO_OUT, DEVICE, DIST_TIMEOUT, EPOCHS, FINETUNE_OUT,
                                IMG_SIZE, OVERWRITE, PRECISION, RESUME, SEED, STRATEGY, THREADS, run_argument, setting)
from edgetl.rundir import lock_run  # light: names and the run lock only


@stage("finetune", "edgetl.finetune:FinetuneSettings", not_settings=("out", "resume", "overwrite"))
def finetune(
    load: Callable,
    data: Path = typer.Argument(...),
    out: Path = FINETUNE_OUT,
    config: Optional[Path] = CONFIG,
    model: Optional[str] = setting(),
    pretrained: Optional[bool] = setting("--pretrained/--no-pretrained"),
    weights: Optional[str] = setting(),
    strategy: Optional[Strategy] = STRATEGY,
    lp_epochs: Optional[int] = setting(),
    baseline: Optional[Baseline] = setting(),
    unfreeze: Optional[int] = setting(),
    epochs: Optional[int] = EPOCHS,
    batch_size: Optional[int] = BATCH_SIZE,
    lr: Optional[float] = setting(),
    backbone_lr_scale: Optional[float] = setting(),
    linear_lr_scale: Optional[float] = setting(),
    linear_augment: Optional[bool] = setting("--linear-augment/--no-linear-augment"),
    layer_decay: Optional[float] = setting(),
    weight_decay: Optional[float] = setting(),
    warmup_epochs: Optional[float] = setting(),
    label_smoothing: Optional[float] = setting(),
    freeze_bn_stats: Optional[bool] = setting("--freeze-bn-stats/--train-bn-stats"),
    img_size: Optional[int] = IMG_SIZE,
    augment: Optional[str] = setting(),
    val_fraction: Optional[float] = setting(),
    seed: Optional[int] = SEED,
    workers: Optional[int] = setting(),
    device: Optional[str] = DEVICE,
    amp: Optional[bool] = setting("--amp/--no-amp"),
    compile: Optional[bool] = setting("--compile/--no-compile"),
    patience: Optional[int] = setting(),
    skip_bad_images: Optional[bool] = setting("--skip-bad-images"),
    accumulate: Optional[int] = setting(),
    sync_bn: Optional[bool] = setting("--sync-bn/--no-sync-bn"),
    dist_backend: Optional[DistBackend] = setting(),
    dist_timeout: Optional[float] = DIST_TIMEOUT,
    check: Optional[CheckMode] = setting("--check"),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
) -> None:
    """Fine-tune a pretrained timm backbone on an image folder; writes the run directory. Under torchrun
    (`torchrun --nproc_per_node N -m edgetl finetune ...`) it trains with DistributedDataParallel: docs/multi-gpu.md."""
    from edgetl.finetune import finetune as run_finetune
    from edgetl.finetune.distributed import World
    from edgetl.presentation.finetune import finetune_events, render_finetune

    if not World.from_env().is_main:
        return _finetune_other_rank(load, out, resume, overwrite)
    cfg = load()
    with finetune_events() as events:
        result = run_finetune(out, cfg, events, resume=resume, overwrite=overwrite)
    render_finetune(out, result)


def _finetune_other_rank(load: Callable, out: Path, resume: bool, overwrite: bool) -> None:
    """Another process under torchrun: rank 0 reports progress, the result, and every failure the processes share
    (a bad setting or file, Ctrl-C); this one speaks only for what happened to it alone."""
    from edgetl.errors import EdgetlError
    from edgetl.finetune import finetune as run_finetune
    from edgetl.finetune.distributed import StoppedByPeer, World

    try:
        cfg = load()
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


@stage("eval", "edgetl.evaluate.settings:EvalSettings")
def eval_cmd(
    load: Callable,
    run: Path = run_argument(),
    config: Optional[Path] = CONFIG,
    data: Optional[Path] = DATA,
    backend: Optional[BackendChoice] = setting(),
    precision: Optional[PrecisionChoice] = PRECISION,
    device: Optional[DeviceChoice] = DEVICE,
    batch_size: Optional[int] = BATCH_SIZE,
    json_path: Optional[Path] = setting("--json", dir_okay=False),
) -> None:
    """Score a run's model on a folder with top-1/top-5/F1/AUC and the confusion matrix."""
    from edgetl.evaluate.run import eval_run
    from edgetl.presentation.eval import render_eval
    from edgetl.presentation.events import RichEvents

    cfg = load()
    with RichEvents() as events:
        result = eval_run(run, cfg, events)
    render_eval(result)


@stage("shift", "edgetl.shift.settings:ShiftSettings")
def shift_cmd(
    load: Callable,
    run: Path = run_argument("with model.onnx (and model.int8.onnx for the coverage check)"),
    config: Optional[Path] = CONFIG,
    data: Optional[Path] = DATA,
    alpha: Optional[float] = setting(),
    quantile: Optional[float] = setting(),
    permutations: Optional[int] = setting(),
    max_images: Optional[int] = setting(),
    reference_images: Optional[int] = setting(),
    coverage_limit: Optional[float] = setting(),
    batch_size: Optional[int] = BATCH_SIZE,
    threads: Optional[int] = THREADS,
    seed: Optional[int] = SEED,
    top: Optional[int] = setting(),
) -> None:
    """Do new images look like the training data? Feature-space distance and an MMD test against val, int8
    range coverage, and accuracy when labelled; writes RUN/shift.json and RUN/shift.png."""
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.shift import render_shift
    from edgetl.shift.run import shift

    cfg = load()
    with lock_run(run, "shift"), RichEvents() as events:
        result = shift(run, cfg, events)
    render_shift(result)


@stage("demo", "edgetl.demo.settings:DemoSettings", not_settings=("out",))
def demo(
    load: Callable,
    config: Optional[Path] = CONFIG,
    out: Path = DEMO_OUT,
    epochs: Optional[int] = EPOCHS,
    img_size: Optional[int] = IMG_SIZE,
    shots: Optional[int] = setting(),
    seeds: Optional[int] = setting(),
    strategy: Optional[str] = STRATEGY,
) -> None:
    """The whole chain on scikit-learn's digits (no download): transfer from an ImageNet EfficientNet-Lite0 vs
    training from scratch, then export, quantization, a TensorRT-RTX build and the benchmark of what this machine
    can run."""
    from edgetl.demo.run import demo as run_demo
    from edgetl.presentation.demo import demo_events

    cfg = load()
    with demo_events() as events:
        run_demo(out, cfg, events)
