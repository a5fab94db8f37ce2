"""The up-front image check and the loader on a generated folder of many small JPEGs (issue 12, part 2).

    nice -n 10 python benchmarks/image_check.py --images 100000 --record

Generates DIR/<class>/<n>.jpg (10 classes, 32 to 64 px, in parallel; into a temporary folder unless --path
is given, and kept there for another run), then times: the first check in full and in header mode (each with
an empty cache), the serial full check the code did before (on a subset), the second (cached) check, and the
training loader's images/s. --record appends the table, the machine, the date, the command and the load
average to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def _write_chunk(args) -> int:
    root, start, stop, classes, seed, (lo, hi) = args
    from PIL import Image

    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        # A smooth picture plus some noise: JPEGs of a few kB, like thumbnails rather than pure noise.
        base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), dtype=np.int16)
        img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        path = Path(root) / f"c{i % classes}" / f"{i:07d}.jpg"
        path.write_bytes(buf.getvalue())
    return stop - start


def generate(root: Path, n: int, classes: int, workers: int, sizes: tuple[int, int], seed: int = 0) -> float:
    """Write n JPEGs under root (skipped when root already holds n); returns seconds."""
    existing = sum(1 for _ in root.rglob("*.jpg")) if root.exists() else 0
    if existing == n:
        return 0.0
    if existing:
        raise SystemExit(f"{root} holds {existing} JPEGs, not {n}: give an empty or new --path")
    t0 = time.perf_counter()
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    step = 2000
    jobs = [(str(root), s, min(n, s + step), classes, seed, sizes) for s in range(0, n, step)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_write_chunk, jobs)) == n
    return time.perf_counter() - t0


def loader_rate(items, workers: int, batch: int, limit: int) -> float:
    """Images/s of the training loader (decode + edgetl's 'flip' augmentation at 32 px + collate), start-up
    of the worker processes excluded."""
    from edgetl.card import ModelCard
    from edgetl.data import ImageDataset, make_loader
    from edgetl.data.transforms import train_transform

    card = ModelCard(model="resnet18", class_names=list(items.classes), input_size=(3, 32, 32), resize=32,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ds = ImageDataset(items.spread(limit), train_transform(card, "flip", seed=0), skip_bad=True)
    loader = make_loader(ds, batch, shuffle=True, workers=workers, device="cpu", seed=0, drop_last=True)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    seen = sum(len(y) for _, y in it)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--sizes", default="32,64", help="smallest,largest side in px [default: 32,64]")
    ap.add_argument("--path", type=Path, help="folder to generate into and keep [default: a temporary folder]")
    ap.add_argument("--workers", type=int, default=None, help="check processes [default: one per CPU]")
    ap.add_argument("--serial-images", type=int, default=10_000, help="subset for the serial (old) check")
    ap.add_argument("--loader-images", type=int, default=20_000)
    ap.add_argument("--loader-workers", default="0,2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md")
    args = ap.parse_args()

    from benchmarks._common import machine
    from edgetl.data import scan_folder
    from edgetl.data.cache import cache_file
    from edgetl.data.check import check_files, default_workers

    workers = args.workers or default_workers()
    load_before = os.getloadavg()
    tmp = None
    if args.path is None:
        tmp = tempfile.mkdtemp(prefix="edgetl-image-check-")
        root = Path(tmp) / "images"
    else:
        root = args.path
    caches = Path(tempfile.mkdtemp(prefix="edgetl-image-check-cache-"))
    rows: list[tuple[str, float, float, str]] = []  # (what, seconds, images/s, note)
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
        gen_s = generate(root, args.images, args.classes, workers, sizes)
        items = scan_folder(root)
        paths = items.paths
        n = len(paths)
        sample = paths[:: max(1, n // 2000)]
        size_mb = sum(os.path.getsize(p) for p in sample) * n / len(sample) / 1e6
        print(f"{n} JPEGs in {root} ({size_mb:.0f} MB; generated in {gen_s:.1f} s)", flush=True)

        def record(what, seconds, count, note=""):
            rows.append((what, seconds, count / seconds if seconds else float("inf"), note))
            print(f"{what:<44} {seconds:8.2f} s {count / seconds if seconds else float('inf'):10.0f} img/s  {note}",
                  flush=True)

        r = check_files(paths, "full", root=root, cache_dir=caches / "full", workers=args.workers)
        assert r.checked == n and not r.bad, (r.checked, len(r.bad))
        record(f"first check, full ({workers} processes)", r.seconds, n)
        cache_mb = cache_file(caches / "full", root).stat().st_size / 1e6
        r = check_files(paths, "header", root=root, cache_dir=caches / "header", workers=args.workers)
        assert r.checked == n and not r.bad
        record(f"first check, header ({workers} processes)", r.seconds, n)
        sub = items.spread(min(args.serial_images, n)).paths
        r = check_files(sub, "full", root=root, cache_dir=False, workers=1)
        record(f"serial full check (the old code), {len(sub)} images", r.seconds, len(sub))
        r = check_files(paths, "full", root=root, cache_dir=caches / "full", workers=args.workers)
        assert r.checked == 0 and r.cached == n
        record("second check, full, cached (nothing changed)", r.seconds, n, f"cache file {cache_mb:.1f} MB")
        touched = paths[:: max(1, n // 100)]
        for p in touched:
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        r = check_files(paths, "full", root=root, cache_dir=caches / "full", workers=args.workers)
        assert r.checked == len(touched)
        record(f"check after touching {len(touched)} files", r.seconds, n, "in-process below 512 to check")
        for w in (int(x) for x in args.loader_workers.split(",")):
            count = min(args.loader_images, n)
            rate = loader_rate(items, w, args.batch, count)
            rows.append((f"training loader, {w} workers, batch {args.batch}", count / rate, rate,
                         f"{count} images, 32 px flip"))
            print(f"{rows[-1][0]:<44} {count / rate:8.2f} s {rate:10.0f} img/s", flush=True)
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    table = ["| step | seconds | images/s | note |", "|---|---:|---:|---|"]
    table += [f"| {what} | {s:.2f} | {rate:,.0f} | {note} |" for what, s, rate, note in rows]
    command = "nice -n 10 python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = "\n".join([
        "",
        f"### Image check and loader, {args.images:,} generated JPEGs ({args.classes} classes, "
        f"{args.sizes.replace(',', '-')} px, {size_mb * 1e3 / max(1, args.images):.0f} kB each on average)",
        "",
        f"`{command}` on {machine()}, {datetime.date.today().isoformat()}, Python {sys.version.split()[0]}. "
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores"
        + (": other jobs shared the machine, so these are lower bounds of what the code does on a quiet one."
           if max(load_before[0], load_after[0]) > (os.cpu_count() or 1) else "."),
        "",
        *table,
        "",
    ])
    print(text)
    if args.record:
        with DOC.open("a", encoding="utf-8") as f:
            f.write(text)
        print(f"appended to {DOC}")


if __name__ == "__main__":
    main()
