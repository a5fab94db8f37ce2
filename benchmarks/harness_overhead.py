"""Target: the bench harness adds little of its own. torch-backend latency measured by edgetl.bench.time_infer
(Backend.infer: input checks, numpy->torch, logits back to numpy, synchronize) vs a bare timed loop calling the
same nn.Module on the same tensor, in the same process. Target: within 5% (p50).

    python benchmarks/harness_overhead.py [--model resnet18] [--img-size 224] [--batch 1] [--iterations 200]

Rounds alternate harness / bare so drift (thermal, other load) hits both alike; the figure is the median of
the per-round p50 ratios.
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
from _common import machine, make_run  # noqa: E402


def bare_loop(model, x_np, iterations: int) -> np.ndarray:
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(iterations):
            t0 = time.perf_counter()
            model(torch.from_numpy(x_np)).numpy()
            times.append(time.perf_counter() - t0)
    return np.asarray(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 steadies a shared machine)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from edgetl.bench import time_infer
    from edgetl.runtime import create_backend

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.model, args.img_size)
        with create_backend("torch", run / "model.safetensors") as be:
            x = np.random.default_rng(0).standard_normal((args.batch, *be.input_shape())).astype(np.float32)
            bare_loop(be.model, x, args.warmup)
            ratios, h_p50, b_p50 = [], [], []
            for _ in range(args.rounds):
                h = np.median(time_infer(be, x, warmup=2, iterations=args.iterations)) * 1e3
                b = np.median(bare_loop(be.model, x, args.iterations)) * 1e3
                h_p50.append(h)
                b_p50.append(b)
                ratios.append(h / b)
    overhead = (statistics.median(ratios) - 1) * 100
    print(f"machine: {machine()}")
    import torch

    print(f"{args.model} {args.img_size}px batch {args.batch}, {args.rounds} rounds x {args.iterations} iterations, "
          f"torch threads {torch.get_num_threads()}")
    print(f"harness p50 {statistics.median(h_p50):.3f} ms, bare loop p50 {statistics.median(b_p50):.3f} ms, "
          f"overhead {overhead:+.1f}% (target within 5%: {'met' if abs(overhead) <= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
