"""ONNX Runtime CPU latency at batch 1: fp32 vs edgetl's cpu-form int8 (U8S8) vs ONNX Runtime's own
`quantize_static` output (QDQ and QOperator, U8S8 per-channel, the same reduce_range) vs edgetl's TensorRT-form
int8 (S8S8), one run per size.

Random-weight model (latency does not depend on the weights); edgetl's graphs are written by edgetl's own export
and quantize, calibrated on the run's random images; quantize_static calibrates on random tensors (accuracy is not
measured here: see quantize_accuracy.py). Interleaved rounds, so that load from other processes hits every model
alike; a speed-up is the median over rounds of fp32's median over that model's median. State the machine's load
(`uptime`) next to the figures: the machine this was written on is shared.

    python benchmarks/int8_cpu_latency.py [--model resnet18] [--sizes 96 224] [--threads 2] [--iters 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_and_quantize, machine, make_run  # noqa: E402


def ort_quantize_static(run: Path, size: int, reduce_range: bool) -> dict[str, Path]:
    """ONNX Runtime's own recipe for the same fp32 graph: quant_pre_process, then quantize_static in both formats
    with its default op types."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = 8

        def get_next(self):
            self.left -= 1
            return None if self.left < 0 else {"images": rng.standard_normal((1, 3, size, size)).astype(np.float32)}

    pre = run / "ort_pre.onnx"
    quant_pre_process(str(run / "model.onnx"), str(pre))
    out = {}
    for fmt, name in ((QuantFormat.QDQ, "QDQ"), (QuantFormat.QOperator, "QOperator")):
        path = run / f"ort_{name}.onnx"
        quantize_static(str(pre), str(path), Reader(), quant_format=fmt, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out[f"onnxruntime quantize_static {name}"] = path
    return out


def one_size(args, size: int) -> None:
    import onnxruntime as ort

    from edgetl.quantize import read_report

    run = make_run(Path(tempfile.mkdtemp(prefix="edgetl-lat-")), args.model, size)
    export_and_quantize(run, "both")
    cpu_entry = read_report(run).entries["int8/cpu"]
    paths = {"fp32": run / "model.onnx", "edgetl int8 cpu form": run / "model.int8.cpu.onnx",
             **ort_quantize_static(run, size, bool(cpu_entry.reduce_range)),
             "edgetl int8 tensorrt form": run / "model.int8.onnx"}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
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
    print(f"\n{args.model} {size} px batch 1; {args.threads} threads; {args.rounds} rounds x {args.iters} iterations; "
          f"cpu form: reduce_range {cpu_entry.reduce_range} ({cpu_entry.cpu_isa}); load {os.getloadavg()[0]:.2f}")
    print("| model | p50 ms | p90 ms | speed-up vs fp32 |")
    print("|---|---:|---:|---:|")
    for k in sessions:
        ratios = [f / q for f, q in zip(per_round["fp32"], per_round[k])]
        a = np.array(samples[k])
        print(f"| {k} | {np.percentile(a, 50):.2f} | {np.percentile(a, 90):.2f} | x{statistics.median(ratios):.2f} |")


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}; onnxruntime {ort.__version__}")
    for size in args.sizes:
        one_size(args, size)


if __name__ == "__main__":
    main()
