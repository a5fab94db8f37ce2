"""Training throughput: edgetl's training step against a bare PyTorch loop, and the data loader's speed.

    python benchmarks/finetune_throughput.py --model resnet50 --img-size 224 --batch-size 64   # GPU
    python benchmarks/finetune_throughput.py --model resnet18 --img-size 64 --batch-size 32    # CPU
    python benchmarks/finetune_throughput.py --table --models tf_efficientnet_lite0,resnet18 --sizes 64,128,224 \
        --threads 1,2 --batch-size 8 --steps 3 --rounds 2                                   # what a CPU fine-tune costs

--table runs every model x size x thread count in one process (both loops each time, no loader part) and prints
one markdown row per combination: images/s of each loop, and edgetl's share of the reference.

Both loops run the same model (same initial weights), batch, precision (AMP bf16/fp16 on GPU, channels_last)
and the same synthetic batches, interleaved in one process (which loop goes first alternates per round); the best round of each is
compared, and the median of the per-round ratios. Target: edgetl within 5% of the reference. The loader part decodes and augments real JPEG
files with edgetl's albumentations pipeline per worker count; target: faster than training consumes images.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn


def synthetic_batches(n, batch, size, classes, device, memory_format):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=g).to(device, memory_format=memory_format),
             torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(n)]


def reference_loop(model, batches, device, amp_dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return len(batches) * len(batches[0][1]) / (time.perf_counter() - t0)


def edgetl_loop(model, batches, device, amp_dtype, memory_format):
    from timm.scheduler import CosineLRScheduler

    from edgetl.finetune import train_one_epoch
    from edgetl.models import param_groups, set_train_mode

    opt = torch.optim.AdamW(param_groups(model, 1e-4, 0.05, 0.1, None), lr=1e-4)
    sched = CosineLRScheduler(opt, t_initial=len(batches) * 10, warmup_t=2, t_in_epochs=False)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    set_train_mode(model)
    _sync(device)
    stats = train_one_epoch(model, batches, opt, crit, device, amp_dtype=amp_dtype, memory_format=memory_format,
                            on_step=sched.step_update)
    _sync(device)
    return stats["images"] / stats["seconds"]


def loader_throughput(img_size, workers_list, n_images, batch):
    from PIL import Image
    from torch.utils.data import DataLoader

    from edgetl.card import ModelCard
    from edgetl.data import ImageDataset, scan_folder
    from edgetl.data.transforms import resize_size, train_transform

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        src = int(img_size * 1.15)
        for i in range(n_images):
            folder = Path(tmp) / f"c{i % 2}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (src, src, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
        card = ModelCard(model="resnet50", class_names=["c0", "c1"], input_size=(3, img_size, img_size),
                         resize=resize_size(img_size, 0.875), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        ds = ImageDataset(scan_folder(tmp), train_transform(card, "flip", seed=0))
        for w in workers_list:
            loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w)
            next(iter(loader))  # start-up of the worker processes is not throughput
            t0 = time.perf_counter()
            seen = sum(len(y) for _, y in loader)
            out[w] = seen / (time.perf_counter() - t0)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(name, img_size, batch_size, steps, rounds, device, amp_dtype, fmt):
    """Best-round images/s of the reference and of edgetl's loop on one model, and the median round ratio."""
    import timm

    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=10).to(device, memory_format=fmt)
    batches = synthetic_batches(steps, batch_size, img_size, 10, device, fmt)
    ref_model, edg_model = copy.deepcopy(base), copy.deepcopy(base)
    reference_loop(ref_model, batches[:1], device, amp_dtype)  # warm-up: allocator, kernels chosen
    edgetl_loop(edg_model, batches[:1], device, amp_dtype, fmt)
    ref, edg = [], []
    for i in range(rounds):
        first, second = (("ref", "edg") if i % 2 == 0 else ("edg", "ref"))
        for which in (first, second):
            if which == "ref":
                ref.append(reference_loop(ref_model, batches, device, amp_dtype))
            else:
                edg.append(edgetl_loop(edg_model, batches, device, amp_dtype, fmt))
    return max(ref), max(edg), float(np.median([e / r for e, r in zip(edg, ref)]))


def table(a, device, amp_dtype, fmt):
    import os

    print(f"{cpu_name()}, torch {torch.__version__}, {date.today().isoformat()}, batch {a.batch_size}, "
          f"{a.steps} steps x {a.rounds} rounds, load average {os.getloadavg()[0]:.1f} at the start")
    print("| model | px | threads | reference img/s | edgetl img/s | edgetl / reference (best; median round) |")
    print("|---|---:|---:|---:|---:|---|")
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in a.models.split(","):
            for size in [int(s) for s in a.sizes.split(",")]:
                ref, edg, median = compare(name, size, a.batch_size, a.steps, a.rounds, device, amp_dtype, fmt)
                print(f"| {name} | {size} | {threads} | {ref:.1f} | {edg:.1f} | {edg / ref * 100:.0f}%; "
                      f"{median * 100:.0f}% |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main(argv=None):
    import timm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--loader-images", type=int, default=256)
    p.add_argument("--json", type=Path)
    p.add_argument("--table", action="store_true", help="every --models x --sizes x --threads, one row each")
    p.add_argument("--models", default="tf_efficientnet_lite0,resnet18")
    p.add_argument("--sizes", default="64,128,160,224")
    p.add_argument("--threads", default="1,2")
    a = p.parse_args(argv)

    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if a.device == "auto" else a.device))
    cuda = device.type == "cuda"
    amp_dtype = None if (a.no_amp or not cuda) else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    if a.table:
        return table(a, device, amp_dtype, fmt)
    torch.manual_seed(0)
    base = timm.create_model(a.model, num_classes=10).to(device, memory_format=fmt)
    batches = synthetic_batches(a.steps, a.batch_size, a.img_size, 10, device, fmt)
    warm = batches[: max(2, a.steps // 5)]
    ref_model, edg_model = copy.deepcopy(base), copy.deepcopy(base)
    reference_loop(ref_model, warm, device, amp_dtype)
    edgetl_loop(edg_model, warm, device, amp_dtype, fmt)
    ref, edg = [], []
    for i in range(a.rounds):
        # Alternate which loop goes first, so drift in clocks or background load favours neither.
        if i % 2 == 0:
            ref.append(reference_loop(ref_model, batches, device, amp_dtype))
            edg.append(edgetl_loop(edg_model, batches, device, amp_dtype, fmt))
        else:
            edg.append(edgetl_loop(edg_model, batches, device, amp_dtype, fmt))
            ref.append(reference_loop(ref_model, batches, device, amp_dtype))
    workers = [int(w) for w in a.workers.split(",") if w != ""]
    loader = loader_throughput(a.img_size, workers, a.loader_images, a.batch_size)
    result = {
        "date": date.today().isoformat(),
        "machine": torch.cuda.get_device_name(0) if cuda else f"{cpu_name()} ({torch.get_num_threads()} threads)",
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "model": a.model, "img_size": a.img_size,
        "batch_size": a.batch_size, "rounds_reference_ips": ref, "rounds_edgetl_ips": edg, "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "channels_last": cuda, "reference_ips": max(ref), "edgetl_ips": max(edg),
        "edgetl_vs_reference": max(edg) / max(ref),
        # Each round's pair ran back to back: the median of their ratios is robust to a noisy machine.
        "edgetl_vs_reference_median_round": float(np.median([e / r for e, r in zip(edg, ref)])),
        "loader_ips_by_workers": loader,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| {result['machine']} | {a.model} {a.img_size}px b{a.batch_size} {result['precision']} | "
          f"reference {max(ref):.1f} img/s | edgetl {max(edg):.1f} img/s (best {max(edg) / max(ref) * 100:.1f}%, "
          f"median round {result['edgetl_vs_reference_median_round'] * 100:.1f}%) | loader "
          + ", ".join(f"{w}w {v:.0f} img/s" for w, v in loader.items()) + " |")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
