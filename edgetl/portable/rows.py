"""One bench row schema, written by `edgetl bench` and by the device, read by the report and by deploy.

A row is one (backend, precision, batch size, device) measurement: latency statistics in milliseconds
over timed calls, throughput, top-1 on the labelled images, and what `compare_rows` adds across rows
(top1_drop against the reference, speedup against a baseline, flags for the failure modes to spot).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .forms import FP16, INT8, REFERENCE_PRECISION
from .isa import cpu_int8_isa

ROW_KEYS = ("backend", "precision", "batch_size", "device", "model_file", "latency_ms", "throughput_ips",
            "iterations", "warmup", "timed", "provider", "cpu_isa", "top1", "n_images", "where",
            "top1_drop", "speedup", "speedup_vs", "flags")
LATENCY_KEYS = ("mean", "p50", "p90", "p99", "min", "max", "std")
DROP_FLAG = 0.02          # top-1 more than 2 points below the reference
NO_GAIN_RATIO = 0.95      # int8 p50 above 95% of fp16's p50: int8 is not buying speed


def ort_timed(cpu: bool) -> str:
    """What an onnxruntime row's latency includes: the words `edgetl bench` and the device write alike."""
    return ("session.run on host arrays (CPU compute)" if cpu else
            "session.run on host arrays (compute; host<->device copies included for GPU providers)")


def latency_stats(seconds: Sequence[float] | np.ndarray, batch_size: int) -> dict[str, Any]:
    """latency_ms (mean, percentiles, min, max, std; 4 decimals), throughput_ips and iterations from
    per-call times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    stats = {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
             "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max()),
             "std": float(ms.std())}
    return {"latency_ms": {k: round(stats[k], 4) for k in LATENCY_KEYS},
            "throughput_ips": round(batch_size / (stats["mean"] / 1e3), 2), "iterations": int(ms.size)}


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    """The first n images of x, tiled when x has fewer: real images at every batch size."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n]) if reps > 1 else np.ascontiguousarray(x[:n])


def pad_batch(x: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """(a batch of exactly `size` for a fixed-batch graph, how many of its images are real): a short last
    batch is padded with copies of its first image; score only the first n outputs."""
    n = len(x)
    if n >= size:
        return np.ascontiguousarray(x[:size]), size
    return np.ascontiguousarray(np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])), n


def make_row(*, backend: str, precision: str, batch_size: int, device: str, model_file: str, seconds,
             warmup: int, timed: str | None, top1: float | None, n_images: int | None, where: str,
             provider: str | None = None) -> dict[str, Any]:
    """A row with every key of ROW_KEYS; top1_drop/speedup/speedup_vs/flags are filled by compare_rows."""
    row = {"backend": backend, "precision": precision, "batch_size": int(batch_size), "device": device,
           "model_file": model_file, **latency_stats(seconds, batch_size), "warmup": int(warmup), "timed": timed,
           "provider": provider,
           # what a CPU's int8 kernels compute depends on its instruction set (VNNI or not): named on every CPU row
           "cpu_isa": cpu_int8_isa()["isa"] if device == "cpu" else None,
           "top1": None if top1 is None else round(float(top1), 6),
           "n_images": None if n_images is None else int(n_images), "where": where,
           "top1_drop": None, "speedup": None, "speedup_vs": None, "flags": []}
    return {k: row[k] for k in ROW_KEYS}


def compare_rows(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Add top1_drop, speedup (vs torch fp32 at the same batch size and device, else the backend's own fp32)
    and flags for the failure modes to spot: an accuracy collapse, int8 no faster than fp16."""
    def find(backend, precision, bs, device=None):
        return next((r for r in rows if r["backend"] == backend and r["precision"] == precision
                     and r["batch_size"] == bs and (device is None or r["device"] == device)), None)

    ref_top1 = (reference or {}).get("top1")
    for r in rows:
        r["top1_drop"] = None if (ref_top1 is None or r["top1"] is None) else round(ref_top1 - r["top1"], 6)
        base = find("torch", "fp32", r["batch_size"], r["device"])
        base_name = "torch fp32"
        if base is None:
            base, base_name = find(r["backend"], "fp32", r["batch_size"]), f"{r['backend']} fp32"
        if base is not None:
            r["speedup"] = round(base["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3)
            r["speedup_vs"] = base_name
        else:
            r["speedup"], r["speedup_vs"] = None, None
        flags = []
        if r["top1_drop"] is not None and r["top1_drop"] > DROP_FLAG:
            flags.append(f"top-1 {r['top1_drop'] * 100:.1f} pts below the reference")
        if r["precision"] == INT8:
            fp16 = find(r["backend"], FP16, r["batch_size"], r["device"])
            if fp16 is not None and r["latency_ms"]["p50"] > NO_GAIN_RATIO * fp16["latency_ms"]["p50"]:
                flags.append("int8 no faster than fp16")
        if r["speedup"] is not None and r["speedup"] < 0.9 and not (r["backend"], r["precision"]) == ("torch", REFERENCE_PRECISION):
            flags.append(f"slower than {r['speedup_vs']}")
        r["flags"] = flags
