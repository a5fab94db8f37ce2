"""Latency side by side, one process, one run per model (ratios are the figure; absolute ms depend on the box).

    python benchmarks/latency_matrix.py cpu [--models resnet18,mobilenetv3_large_100] [--img-size 224]
    python benchmarks/latency_matrix.py gpu [--models resnet50,mobilenetv3_large_100]

cpu: torch eager fp32 vs onnxruntime fp32 vs onnxruntime int8 (the cpu form, U8S8, written by edgetl quantize;
     calibrated on random images: latency only) at batch 1 and 8.
gpu: torch eager fp32 vs fp16 vs bf16 vs torch.compile (fp16) at batch 1 and 32.
Everything goes through edgetl's Backend interface and edgetl.bench.time_infer (synchronised clock).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_and_quantize, machine, make_run  # noqa: E402


def measure(name, path, device, precision, batches, iterations, warmup, **options):
    from edgetl.bench import latency_stats, time_infer
    from edgetl.runtime import create_backend

    out = {}
    with create_backend(name, path, device=device, precision=precision, **options) as be:
        for bs in batches:
            x = np.random.default_rng(0).standard_normal((bs, *be.input_shape())).astype(np.float32)
            out[bs] = latency_stats(time_infer(be, x, warmup, iterations), bs)["latency_ms"]["p50"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=("cpu", "gpu"))
    ap.add_argument("--models", default=None)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice
    models = (args.models or ("resnet18,mobilenetv3_large_100" if args.target == "cpu"
                              else "resnet50,mobilenetv3_large_100")).split(",")
    batches = (1, 8) if args.target == "cpu" else (1, 32)
    print(f"machine: {machine()}; {args.img_size}px, p50 of {args.iterations} iterations after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            run = make_run(Path(tmp), model, args.img_size)
            rows = {}
            if args.target == "cpu":
                import torch

                export_and_quantize(run, "cpu")
                int8 = run / "model.int8.cpu.onnx"
                rows["torch eager fp32"] = measure("torch", run, "cpu", "fp32", batches, args.iterations, args.warmup)
                rows["onnxruntime fp32"] = measure("onnxruntime", run / "model.onnx", "cpu", "fp32", batches,
                                                   args.iterations, args.warmup)
                rows["onnxruntime int8 (cpu form)"] = measure("onnxruntime", int8, "cpu", "int8", batches,
                                                              args.iterations, args.warmup)
                base_name = "torch eager fp32"
                print(f"torch threads {torch.get_num_threads()}")
            else:
                rows["torch eager fp32"] = measure("torch", run, "cuda", "fp32", batches, args.iterations, args.warmup)
                rows["torch eager fp16"] = measure("torch", run, "cuda", "fp16", batches, args.iterations, args.warmup)
                rows["torch eager bf16"] = measure("torch", run, "cuda", "bf16", batches, args.iterations, args.warmup)
                rows["torch.compile fp16"] = measure("torch", run, "cuda", "fp16", batches, args.iterations,
                                                     args.warmup, compile=True)
                base_name = "torch eager fp32"
            print(f"\n{model}")
            print("| variant | " + " | ".join(f"bs{b} p50 ms | bs{b} vs {base_name}" for b in batches) + " |")
            print("|---|" + "---:|---:|" * len(batches))
            for name, lat in rows.items():
                cells = [f"{lat[b]:.2f} | {rows[base_name][b] / lat[b]:.2f}x" for b in batches]
                print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
