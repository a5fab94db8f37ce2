"""ONNX Runtime CPU latency at batch 1: fp32 vs cpu-form int8 (U8S8) vs TensorRT-form int8 (S8S8), one run.

Random-weight resnet18 at 224 px (latency does not depend on the weights); the graphs are written by
edgetl's own export and quantize, calibrated on random images (accuracy is not measured here: see
quantize_accuracy.py). Interleaved rounds, so that load
from other processes hits all three alike; the ratio is the median over rounds.

    python benchmarks/int8_cpu_latency.py [--model resnet18] [--size 224] [--threads 2] [--iters 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_and_quantize, machine, make_run  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    run = make_run(Path(tempfile.mkdtemp(prefix="edgetl-lat-")), args.model, args.size)
    export_and_quantize(run, "both")
    paths = {"fp32": run / "model.onnx", "int8 cpu form": run / "model.int8.cpu.onnx",
             "int8 tensorrt form": run / "model.int8.onnx"}
    rng = np.random.default_rng(0)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    for s in sessions.values():  # warm-up
        for _ in range(10):
            s.run(None, {"images": x})
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            times = []
            for _ in range(args.iters):
                t = time.perf_counter()
                s.run(None, {"images": x})
                times.append((time.perf_counter() - t) * 1000)
            per_round[k].append(statistics.median(times))
            samples[k] += times
    print(f"machine: {machine()}, {args.threads} threads; onnxruntime {ort.__version__}; "
          f"{args.model} {args.size} px batch 1; {args.rounds} rounds x {args.iters} iterations")
    print("| model | p50 ms | p90 ms | mean ms | speed-up vs fp32 (median of per-round ratios) |")
    print("|---|---:|---:|---:|---:|")
    for k in sessions:
        ratios = [f / q for f, q in zip(per_round["fp32"], per_round[k])]
        a = np.array(samples[k])
        print(f"| {k} | {np.percentile(a, 50):.2f} | {np.percentile(a, 90):.2f} | {a.mean():.2f} | "
              f"x{statistics.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
