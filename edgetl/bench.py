"""`edgetl bench`: latency next to accuracy, for every backend x precision x batch size this machine can run.

Every row goes through the same Backend interface (create_backend), so the harness never knows which runtime
it drives: warm-up, then timed infer() calls on a synchronised clock (perf_counter around infer() +
backend.synchronize()), then top-1 on the data through the same backend and precision. A combination that
cannot run here is skipped with its reason, and the rest still run.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgetl import __version__
from edgetl.errors import DataError, EdgetlError
from edgetl.portable.rows import batch_of, compare_rows, latency_stats, make_row
from edgetl.rundir import RunDir

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100
# The row schema, latency statistics and the flags (DROP_FLAG, NO_GAIN_RATIO; see docs/bench.md) live in
# edgetl.portable.rows, shared with the device entry point: one row schema on both sides.


# -- parsing the CLI's lists ------------------------------------------------------------------------
def parse_names(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return [i.strip().lower() for i in items if i.strip()]


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = [int(str(i).strip()) for i in items if str(i).strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise EdgetlError(f"--batch-sizes {text!r}: expected positive integers, e.g. 1,8")
    return sorted(set(sizes))


# -- what to run -------------------------------------------------------------------------------------
def plan_rows(run: RunDir, backends: Sequence[str], precisions: Sequence[str] | None,
              device: str) -> tuple[list[tuple[str, str, Path, str]], list[dict[str, Any]]]:
    """(backend, precision, model_file, device) to run, and what is skipped with its reason.

    precisions=None means every model file the run has: torch fp32 (+fp16 on CUDA), the run's ONNX files,
    the engines built for this machine.
    """
    from edgetl.runtime import resolve_model_file

    todo: list[tuple[str, str, Path, str]] = []
    skipped: list[dict[str, Any]] = []

    def skip(backend, precision, reason):
        skipped.append({"backend": backend, "precision": precision, "reason": reason})

    for p in precisions or ():
        if p not in PRECISIONS:
            skip(None, p, f"unknown precision '{p}' (use {', '.join(PRECISIONS)})")
    known = [p for p in precisions if p in PRECISIONS] if precisions is not None else None
    for backend in backends:
        if backend not in BACKENDS:
            skip(backend, None, f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
            continue
        dev = "cuda" if backend == "tensorrt" else device
        if backend == "tensorrt":
            from edgetl.engine import facts_here

            # an engine runs through TensorRT or TensorRT-RTX, whichever this machine can run
            here, missing = facts_here()
            if not here:
                skip(backend, None, "; ".join(str(e) for e in missing.values()))
                continue
        if known is None:
            wanted = {"torch": ["fp32"] + (["fp16"] if dev.startswith("cuda") else [])}.get(
                backend, ["fp32", "fp16", "int8"])
            implicit = True
        else:
            wanted, implicit = known, False
        for precision in wanted:
            reason = _unsupported(backend, precision, dev)
            if reason:
                skip(backend, precision, reason)
                continue
            try:
                path = resolve_model_file(run, backend, precision, dev)
            except EdgetlError as e:
                if not implicit:  # asked for by name: say why it is missing; otherwise it just is not there
                    skip(backend, precision, str(e))
                continue
            todo.append((backend, precision, Path(path), dev))
    return todo, skipped


def _unsupported(backend: str, precision: str, device: str) -> str | None:
    if backend == "torch" and precision == "int8":
        return "torch has no int8 path in edgetl: the int8 model is the Q/DQ ONNX (onnxruntime and tensorrt rows)"
    if backend == "torch" and precision in ("fp16", "bf16") and not device.startswith("cuda"):
        return (f"torch {precision} on the CPU is not a deployment path (slow reduced-precision kernels); "
                "bench it with --device cuda")
    if backend != "torch" and precision == "bf16":
        return "edgetl writes no bf16 ONNX or engine (quantize makes fp16 and int8); bf16 is a torch-only row"
    return None


# -- timing ----------------------------------------------------------------------------------------
def time_infer(backend, x: np.ndarray, warmup: int = DEFAULT_WARMUP, iterations: int | None = DEFAULT_ITERATIONS,
               duration: float | None = None, tick: Callable[[], None] | None = None) -> np.ndarray:
    """Seconds per infer() call after `warmup` untimed calls: `iterations` calls, or as many as fit in
    `duration` seconds (at least 10). Each call is timed to backend.synchronize(), so queued device work
    is inside the interval."""
    clock = time.perf_counter
    for _ in range(max(0, warmup)):
        backend.infer(x)
        backend.synchronize()
    times: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        backend.infer(x)
        backend.synchronize()
        times.append(clock() - t0)
        if tick:
            tick()
        if iterations is not None and len(times) >= iterations:
            break
        if iterations is None and clock() - start >= (duration or 0.0) and len(times) >= 10:
            break
    return np.asarray(times, dtype=np.float64)


# -- the benchmark ---------------------------------------------------------------------------------
def bench_run(run_path: str | os.PathLike, data: str | os.PathLike | None = None,
              backends: Sequence[str] | str = DEFAULT_BACKENDS, precisions: Sequence[str] | str | None = None,
              batch_sizes: Sequence[int] | str = (1,), warmup: int = DEFAULT_WARMUP,
              iterations: int | None = DEFAULT_ITERATIONS, duration: float | None = None, device: str = "cpu",
              threads: int | None = None, limit: int | None = None, cuda_graph: bool = False,
              progress: bool = True, write: bool = True, on_skip: Callable[[dict], None] | None = None) -> dict:
    """Benchmark a run; returns the bench.json dict (and writes bench.json/md/png unless write=False)."""
    from edgetl.presentation.console import make_progress
    from edgetl.runtime import create_backend

    run = RunDir(run_path)
    run.require(hint="give the folder that `edgetl finetune --out` wrote")
    backends = parse_names(backends) or list(DEFAULT_BACKENDS)
    precisions = parse_names(precisions)
    batch_sizes = parse_batch_sizes(batch_sizes)
    if duration is not None:
        if not (math.isfinite(duration) and duration > 0):  # nan passes `<= 0` and would time forever
            raise EdgetlError(f"--duration {duration}: give seconds > 0")
        iterations = None
    elif iterations is None or iterations < 1:
        raise EdgetlError(f"--iterations {iterations}: give a count >= 1 (or --duration SECONDS)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EdgetlError(f"--device {device}: use cpu or cuda")
    if threads is not None and threads < 1:
        raise EdgetlError(f"--threads {threads}: give a count >= 1")
    if limit is not None and limit < 1:
        raise EdgetlError(f"--limit {limit}: give a count >= 1 (or leave it out to score every image)")
    todo, skipped = plan_rows(run, backends, precisions, device)
    notes: list[str] = []
    for s in skipped:
        if on_skip:
            on_skip(s)
    data_items = _DataSource(run, data, limit)

    rows: list[dict[str, Any]] = []
    per_row_steps = len(batch_sizes) * ((iterations or 50) + 1) + 1
    with (make_progress() if progress else _NoProgress()) as bar:
        task = bar.add_task("benchmarking", total=max(1, len(todo) * per_row_steps))
        for backend_name, precision, model_file, dev in todo:
            label = f"{backend_name} {precision}"
            bar.update(task, description=f"{label}: loading")
            options = {"threads": threads} if threads else {}
            if backend_name == "tensorrt" and cuda_graph:
                options["cuda_graph"] = True
            try:
                with create_backend(backend_name, model_file, device=dev, precision=precision, **options) as be:
                    items, note = data_items.labelled(be.card)
                    if note and note not in notes:
                        notes.append(note)
                    top1 = None
                    if items is not None:
                        bar.update(task, description=f"{label}: top-1 on {len(items)} images")
                        top1 = _top1(be, items, max(batch_sizes))
                    bar.advance(task)
                    x_all = data_items.inputs(be.card, max(batch_sizes))
                    for bs in batch_sizes:
                        bar.update(task, description=f"{label}: batch {bs}")
                        x = batch_of(x_all, bs)
                        secs = time_infer(be, x, warmup, iterations, duration, tick=lambda: bar.advance(task))
                        info = be.describe()
                        rows.append(make_row(backend=backend_name, precision=precision, batch_size=bs, device=dev,
                                             model_file=_relative(model_file, run.path), seconds=secs, warmup=warmup,
                                             timed=info.get("timed"), provider=info.get("provider"), top1=top1,
                                             n_images=None if items is None else len(items), where="local"))
            except EdgetlError as e:
                entry = {"backend": backend_name, "precision": precision, "model_file": _relative(model_file, run.path),
                         "reason": str(e)}
                skipped.append(entry)
                if on_skip:
                    on_skip(entry)
    if not rows:
        raise EdgetlError("bench: nothing could run here: " + "; ".join(skipped_lines(skipped)),
            "see `edgetl bench --help`; export/quantize/build the model files first")

    reference = _reference(run, rows, data_items, max(batch_sizes))
    compare_rows(rows, reference)
    result = {
        "edgetl_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path),
        "data": data_items.description,
        "settings": {"backends": backends, "precisions": precisions, "batch_sizes": batch_sizes, "warmup": warmup,
                     "iterations": iterations, "duration_s": duration, "device": device, "threads": threads,
                     "limit": limit, "cuda_graph": cuda_graph},
        "reference": reference,
        "rows": rows,
        "skipped": skipped,
        "notes": notes,
        "system": system_info(),
    }
    if write:
        write_results(run, result)
    return result


def write_results(run: RunDir, result: dict) -> None:
    """bench.json, bench.md and bench.png, each written atomically."""
    from edgetl.io import write_json, write_text
    from edgetl.plots import plot_bench
    from edgetl.report import bench_markdown

    write_json(run.bench_json, result)
    write_text(run.bench_md, bench_markdown(result))
    plot_bench(result, run.bench_png)


def _top1(backend, items, batch_size: int) -> float:
    from edgetl.evaluate import evaluate

    return evaluate(backend, items, batch_size)["top1"]  # the same top-1 `edgetl eval` reports


class _DataSource:
    """The images a bench scores and times: DIR, or the run's own validation split (splits.json)."""

    def __init__(self, run: RunDir, data, limit: int | None):
        self.run, self.data, self.limit = run, data, limit
        self._labelled: dict[tuple, tuple] = {}
        self._inputs: dict[tuple, np.ndarray] = {}
        if data is None:
            run.require(run.splits, hint="pass --data DIR (an ImageFolder of labelled images)")
            self.description = f"{run.splits.name} (the run's validation split)"
        else:
            self.description = str(data)

    def labelled(self, card) -> tuple[Any, str | None]:
        """(ImageList in the model's label order, None) or (None, why top-1 cannot be scored)."""
        from edgetl.data import read_splits, scan_folder

        key = tuple(card.class_names)
        if key not in self._labelled:
            try:
                items = read_splits(self.run.splits)[1] if self.data is None else scan_folder(self.data, classes=card.class_names)
                if list(items.classes) != list(card.class_names):
                    raise DataError(f"{self.description}: classes {items.classes} differ from the model's {card.class_names}")
                if self.limit is not None:
                    items = items.subset(range(min(self.limit, len(items))))
                self._labelled[key] = (items, None)
            except DataError as e:
                self._labelled[key] = (None, f"top-1 not scored: {str(e)}")
        return self._labelled[key]

    def inputs(self, card, n: int) -> np.ndarray:
        """Up to n preprocessed images for timing (labels not needed, so unknown classes still time)."""
        from edgetl.data import load_arrays, scan_folder

        key = (card.to_json(), n)
        if key not in self._inputs:
            items, note = self.labelled(card)
            if items is None:
                if self.data is None:
                    raise DataError(note or "no images to time")
                items = scan_folder(self.data)  # any images will do for timing
            self._inputs[key] = load_arrays(items, card, limit=n)[0]
        return self._inputs[key]


def _reference(run: RunDir, rows: list[dict], data: _DataSource, batch_size: int) -> dict[str, Any]:
    """The accuracy the drop is measured against: the fine-tuned PyTorch fp32 model on the same images.

    Taken from the torch fp32 row when there is one; else scored here (CPU, accuracy only) when the run has
    model.safetensors; else (a device bundle without weights) the fp32 ONNX/engine row, said so.
    """
    for r in rows:
        if r["backend"] == "torch" and r["precision"] == "fp32" and r["top1"] is not None:
            return {"top1": r["top1"], "source": "torch fp32 row"}
    if run.weights.exists():
        from edgetl.runtime import create_backend

        try:
            with create_backend("torch", run.weights, device="cpu", precision="fp32") as be:
                items, _ = data.labelled(be.card)
                if items is not None:
                    return {"top1": round(_top1(be, items, batch_size), 6),
                            "source": "torch fp32 (model.safetensors, CPU), scored for the reference only"}
        except EdgetlError:
            pass
    for backend in ("onnxruntime", "tensorrt"):
        for r in rows:
            if r["backend"] == backend and r["precision"] == "fp32" and r["top1"] is not None:
                return {"top1": r["top1"], "source": f"{backend} fp32 row (no model.safetensors here)"}
    return {"top1": None, "source": "none: no fp32 model scored on these images"}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


# -- the machine -----------------------------------------------------------------------------------
def system_info() -> dict[str, Any]:
    """CPU, GPU, driver, library versions; on a Jetson the L4T release, power mode and clocks."""
    from importlib import metadata

    from edgetl.portable import jetson
    from edgetl.portable.jetson import l4t_release

    info: dict[str, Any] = {"hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
                            "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    libs = {}
    for name in ("edgetl", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "timm", "numpy", "tensorrt",
                 "cuda-python", "cuda-bindings"):
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


def skipped_lines(skipped: Iterable[dict]) -> list[str]:
    return [f"skipped {' '.join(filter(None, (s.get('backend'), s.get('precision')))) or '*'}: {s['reason']}"
            for s in skipped]


__all__ = ["batch_of", "bench_run", "compare_rows", "latency_stats", "plan_rows", "skipped_lines", "system_info", "time_infer",
           "write_results"]
