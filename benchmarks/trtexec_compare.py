"""Where TensorRT is: edgetl's tensorrt backend latency vs trtexec's figure for the same engine (target within 5%),
and the int8 engine's top-1 vs fp32 PyTorch (target within 0.5 points, from `edgetl bench`).

    python benchmarks/trtexec_compare.py RUN [--precision fp32] [--batch 1] [--iterations 500]

The engine is the one `edgetl build RUN --precision P` wrote for this machine. trtexec's CUDA-graph and
data-transfer defaults changed between 10.x and 11.x, so both are pinned on every call:
  - "with copies":  edgetl cuda_graph=True (H2D + graph launch + D2H)  vs  trtexec --useCudaGraph, data
                    transfers on (its "Latency" line = H2D + compute + D2H)
  - "compute only": trtexec --useCudaGraph --noDataTransfers ("GPU Compute Time"), reported beside them.
Not run on this project's development machines (no TensorRT there): see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def trtexec_median(plan: Path, input_name: str, shape: tuple, iterations: int, extra: list[str]) -> dict[str, float]:
    shape_arg = f"{input_name}:{'x'.join(map(str, shape))}"
    cmd = ["trtexec", f"--loadEngine={plan}", f"--shapes={shape_arg}", f"--iterations={iterations}", "--warmUp=500",
           "--duration=0", "--useSpinWait", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = {}
    for key in ("Latency", "GPU Compute Time"):
        m = re.search(rf"{key}: min = [\d.]+ ms, max = [\d.]+ ms, mean = [\d.]+ ms, median = ([\d.]+) ms", out)
        if m:
            found[key] = float(m.group(1))
    print("  " + " ".join(cmd))
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=500)
    args = ap.parse_args()
    if shutil.which("trtexec") is None:
        sys.exit("trtexec is not on PATH (JetPack: /usr/src/tensorrt/bin/trtexec)")

    from edgetl.bench import time_infer
    from edgetl.tensorrt.engine import read_sidecar
    from edgetl.rundir import RunDir
    from edgetl.runtime import create_backend, resolve_model_file

    run = RunDir(args.run)
    plan = resolve_model_file(run, "tensorrt", args.precision, "cuda")
    side = read_sidecar(plan)
    with create_backend("tensorrt", plan, device="cuda", precision=args.precision, cuda_graph=True) as be:
        x = np.random.default_rng(0).standard_normal((args.batch, *be.input_shape())).astype(be.input_dtype())
        ours = float(np.median(time_infer(be, x, warmup=50, iterations=args.iterations))) * 1e3
        shape = (args.batch, *be.input_shape())
    print(f"machine: {machine()}; {side['library']} {side['library_version']}; {plan}")
    with_copies = trtexec_median(plan, side["profile"]["input"], shape, args.iterations, ["--useCudaGraph"])
    compute = trtexec_median(plan, side["profile"]["input"], shape, args.iterations,
                             ["--useCudaGraph", "--noDataTransfers"])
    ref = with_copies.get("Latency")
    print(f"edgetl tensorrt backend (CUDA graph, with copies) p50 {ours:.3f} ms")
    print(f"trtexec --useCudaGraph (with copies) median latency {ref} ms; "
          f"--noDataTransfers GPU compute median {compute.get('GPU Compute Time')} ms")
    if ref:
        diff = (ours / ref - 1) * 100
        print(f"edgetl vs trtexec: {diff:+.1f}% (target within 5%: {'met' if abs(diff) <= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
