"""ONNX Runtime CPU latency at batch 1: fp32 vs cpu-form int8 (U8S8) vs TensorRT-form int8 (S8S8), one run.

Random-weight resnet18 at 224 px (latency does not depend on the weights); calibrated on random
normalised images (accuracy is not measured here: see quantize_accuracy.py). The three graphs come from
edgetl's own quantizer settings (edgetl.quantize.quantizer_settings). Interleaved rounds, so that load
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
from _common import machine  # noqa: E402


def main() -> None:
    import onnx
    import onnxruntime as ort
    import timm
    import torch

    from edgetl.calibration.methods import collect_ranges
    from edgetl.quantize import _qdq, _shape_inferred, check_graph

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgetl-lat-"))
    torch.manual_seed(0)
    net = timm.create_model(args.model, pretrained=False, num_classes=1000).eval()
    fp32 = tmp / "model.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, args.size, args.size),), str(fp32), input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, opset_version=17, dynamo=False)

    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((4, 3, args.size, args.size)).astype(np.float32) for _ in range(4)]

    class Reader:
        exhausted = False
        batches_read = 0

        def __init__(self):
            self.it = iter(calib)
            self.left = None

        def start_chunk(self, n):
            self.left = n

        def get_next(self):
            x = next(self.it, None)
            if x is None:
                self.exhausted = True
                return None
            self.batches_read += 1
            return {"images": x}

    ranges = collect_ranges(fp32, Reader(), "minmax")

    class Calib:
        method = "minmax"

    Calib.ranges = ranges
    base = _shape_inferred(fp32)
    paths = {"fp32": fp32}
    for target in ("cpu", "tensorrt"):
        proto = _qdq(base, Calib, target, [])
        check_graph(proto, target)
        paths[f"int8 {target} form"] = tmp / f"{target}.onnx"
        onnx.save(proto, str(paths[f"int8 {target} form"]))

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
