"""`edgetl export`, `quantize`, `build` and `bench`: from the trained model to measured engines."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from edgetl.choices import BuildTarget, CalibMethod, Device as DeviceChoice, EnginePrecision, QuantPrecision
from edgetl.choices import QuantTarget
from edgetl.cli.command import stage
from edgetl.cli.options import (BATCH_SIZE, CONFIG, DATA, DEVICE, DURATION, ITERATIONS, PRECISION, SEED, THREADS,
                                WARMUP, run_argument, setting)
from edgetl.presentation.console import console
from edgetl.rundir import lock_run  # light: names and the run lock only


@stage("export", "edgetl.export.settings:ExportSettings")
def export_cmd(
    load: Callable,
    run: Path = run_argument("holds model.safetensors and splits.json"),
    config: Optional[Path] = CONFIG,
    opset: Optional[int] = setting(),
    static_batch: Optional[int] = setting(),
    fuse_preprocess: Optional[bool] = setting("--fuse-preprocess/--no-fuse-preprocess"),
    tolerance: Optional[float] = setting(),
    simplify: Optional[bool] = setting("--simplify/--no-simplify"),
    parity_images: Optional[int] = setting(),
) -> None:
    """Export the run's model to RUN/model.onnx, checked against PyTorch on real validation images."""
    from edgetl.export.run import export
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.export import render_export

    cfg = load()
    with lock_run(run, "export"), RichEvents() as events:
        result = export(run, cfg, events)
    render_export(result)


@stage("quantize", "edgetl.quantize:QuantizeSettings")
def quantize(
    load: Callable,
    run: Path = run_argument("with model.onnx, from `edgetl export`"),
    config: Optional[Path] = CONFIG,
    precision: Optional[QuantPrecision] = PRECISION,
    target: Optional[QuantTarget] = setting(),
    calib: Optional[Path] = setting(),
    calib_size: Optional[int] = setting(),
    method: Optional[CalibMethod] = setting(),
    percentile: Optional[float] = setting(),
    data: Optional[Path] = DATA,
    max_drop: Optional[float] = setting(),
    batch_size: Optional[int] = BATCH_SIZE,
    seed: Optional[int] = SEED,
    threads: Optional[int] = THREADS,
    qat: Optional[bool] = setting("--qat/--no-qat"),
    qat_epochs: Optional[int] = setting(),
    qat_lr: Optional[float] = setting(),
    qat_batch_size: Optional[int] = setting(),
) -> None:
    """Bake INT8 (Q/DQ) or FP16 into the ONNX graph and score it against fp32 -> quant_report.json."""
    from edgetl.errors import QuantizeBudgetMissed
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.quantize import render_quantize
    from edgetl.quantize import quantize as run_quantize

    cfg = load()
    try:
        with lock_run(run, "quantize"), RichEvents() as events:
            result = run_quantize(run, cfg, events)
    except QuantizeBudgetMissed as e:  # written and recorded: show the table, then main() gives exit code 3
        render_quantize(e.result)
        raise
    render_quantize(result)


@stage("build", "edgetl.tensorrt.build:BuildSettings")
def build_cmd(
    load: Callable,
    run: Path = run_argument("holds model.onnx / model.fp16.onnx / model.int8.onnx"),
    config: Optional[Path] = CONFIG,
    precision: Optional[EnginePrecision] = PRECISION,
    batch: Optional[str] = setting(),
    workspace: Optional[int] = setting(),
    opt_level: Optional[int] = setting(),
    version_compatible: Optional[bool] = setting("--version-compatible/--no-version-compatible"),
    dla_core: Optional[int] = setting(),
    timing_cache: Optional[bool] = setting("--timing-cache/--no-timing-cache"),
    target: Optional[BuildTarget] = setting(),
    compute_capability: Optional[str] = setting(),
    tf32: Optional[bool] = setting("--tf32/--no-tf32"),
    onnx: Optional[Path] = setting(),
) -> None:
    """Build a TensorRT (or TensorRT-RTX) engine (strongly typed; precision comes from the ONNX graph)."""
    from edgetl.tensorrt.build import build
    from edgetl.presentation.build import render_build
    from edgetl.presentation.events import RichEvents

    cfg = load()
    with lock_run(run, "build"), RichEvents() as events:
        result = build(run, cfg, events)
    render_build(result)


@stage("bench", "edgetl.bench:BenchSettings")
def bench_cmd(
    load: Callable,
    run: Path = run_argument(),
    config: Optional[Path] = CONFIG,
    data: Optional[Path] = DATA,
    backends: Optional[str] = setting(),
    precisions: Optional[str] = setting(),
    batch_sizes: Optional[str] = setting(),
    iterations: Optional[int] = ITERATIONS,
    duration: Optional[float] = DURATION,
    warmup: Optional[int] = WARMUP,
    device: Optional[DeviceChoice] = DEVICE,
    threads: Optional[int] = THREADS,
    limit: Optional[int] = setting(min=1),
    cuda_graph: Optional[bool] = setting("--cuda-graph/--no-cuda-graph"),
) -> None:
    """Latency (mean/p50/p90/p99, throughput) and top-1 per backend x precision x batch size; writes
    RUN/bench.json, bench.md and bench.png."""
    from edgetl.bench import bench
    from edgetl.presentation.bench import render_bench
    from edgetl.presentation.events import RichEvents
    from edgetl.rundir import RunDir

    cfg = load()
    with lock_run(run, "bench"), RichEvents() as events:
        result = bench(run, cfg, events)
    render_bench(result)
    r = RunDir(run)
    console.print(f"wrote {', '.join(str(p) for p in (r.bench_json, r.bench_md, r.bench_png))}", markup=False)
