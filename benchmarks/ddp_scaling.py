"""Scaling efficiency of finetune's DDP training step: images/s with N processes / (N x images/s of one process).

Each process trains on its own fixed batch (weak scaling: the global batch grows with N), with edgetl's own
DistributedDataParallel wrapping (edgetl.finetune.distributed.World) and train step (train_one_epoch), on
synthetic images so that decoding does not enter the figure. Every process gets one CPU thread (torchrun's
OMP_NUM_THREADS=1), so on the CPU N processes want N free cores.

    python benchmarks/ddp_scaling.py --nproc 1 2                                   # CPU, gloo (docs/BENCHMARKS.md)
    python benchmarks/ddp_scaling.py --nproc 1 8 --device cuda --model resnet50 --img-size 224 --batch 64   # 8 GPUs, nccl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to time (1 first)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="images per process and step")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after 5 untimed)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (one GPU per process)")
    ap.add_argument("--repeats", type=int, default=3, help="launches per process count; the best is kept")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # set by the launcher
    return ap.parse_args(argv)


def worker(args) -> None:
    """One process of a torchrun launch: time `steps` DDP steps; rank 0 writes the result to args.worker."""
    import torch
    from torch import nn

    from edgetl.finetune import train_one_epoch
    from edgetl.finetune.distributed import World
    from edgetl.models import create_model

    world = World.from_env()
    device = world.device(args.device)
    with world.group(device, "auto", 300):
        torch.manual_seed(world.rank)
        model, _ = create_model(args.model, 10, img_size=args.img_size)
        model = model.to(device)
        ddp = world.wrap(model, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        crit = nn.CrossEntropyLoss()
        shape = (args.batch, 3, args.img_size, args.img_size)
        batches = [(torch.randn(shape), torch.randint(0, 10, (args.batch,))) for _ in range(args.steps)]
        train_one_epoch(ddp, batches[:5], opt, crit, device)  # untimed: allocator, DDP buckets, cudnn choices
        world.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        stats = train_one_epoch(ddp, batches, opt, crit, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        images, total_seconds = world.sum([float(stats["images"]), seconds], device)
        if world.is_main:
            args.worker.write_text(json.dumps({"processes": world.size, "images": images,
                                               "seconds": total_seconds / world.size,
                                               "images_per_second": images / (total_seconds / world.size)}))


def launch(args, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
               str(Path(__file__).resolve()), "--worker", str(out), "--model", args.model, "--img-size",
               str(args.img_size), "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"torchrun with {nproc} process(es) failed:\n{res.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker is not None:
        worker(args)
        return
    sys.path.insert(0, str(HERE))
    from _common import machine

    best = {}
    for n in args.nproc:
        runs = [launch(args, n) for _ in range(args.repeats)]
        best[n] = max(r["images_per_second"] for r in runs)
        each = ", ".join(f"{r['images_per_second']:.1f}" for r in runs)
        print(f"{n} process(es): {best[n]:.1f} images/s (best of {args.repeats}: {each})", flush=True)
    base = best.get(1)
    print(f"\n{args.model} {args.img_size} px, {args.batch} images per process and step, {args.device}; "
          f"{machine()}; {datetime.date.today().isoformat()}")
    print("| processes | images/s | scaling efficiency |\n|---|---|---|")
    for n, ips in best.items():
        eff = f"{ips / (n * base):.2f}" if base else "n/a"
        print(f"| {n} | {ips:.1f} | {eff} |")


if __name__ == "__main__":
    main()
