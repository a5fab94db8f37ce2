"""`edgetl shift` on a real run: its verdicts on held-out images of the training distribution and on changed
copies of them (inverted, rotated, noisy, darker and blurred), and its speed in images per second.

The run is copied first (shift writes shift.json into it). The first check also computes the training side (the
train split's class means and covariance, the val split's and the calibration images' pass) and caches it; its
time is reported apart, then each set's check is timed alone.

    edgetl demo --out runs/demo        # an EfficientNet-Lite0 (ImageNet weights) fine-tuned on digits 5-9
    python benchmarks/shift.py runs/demo/transfer-seed0 runs/demo/data-seed0/target/test [--threads 2]

Speed at a deployment resolution (the demo's digits are 32 px): `--scaffold 224` times the same check on an
EfficientNet-Lite0 run made without training (random weights and images: the verdicts mean nothing there, the
time does; 100 train, 100 val, 200 new images).

    python benchmarks/shift.py --scaffold 224 [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

CHANGES = {
    "same": lambda im, rng: im,
    "inverted": lambda im, rng: Image.eval(im, lambda v: 255 - v),
    "rotated": lambda im, rng: im.rotate(90),
    "noisy": lambda im, rng: Image.fromarray(np.clip(np.asarray(im, np.float32)
                                                     + rng.normal(0, 60, np.asarray(im).shape), 0, 255).astype(np.uint8)),
    "dark+blur": lambda im, rng: Image.eval(im.filter(ImageFilter.GaussianBlur(1.5)), lambda v: v // 2),
}


def write_variant(src: Path, dst: Path, change, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = 0
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            change(Image.open(path), rng).save(out.with_suffix(".png"))
            n += 1
    return n


def scaffold(root: Path, size: int) -> tuple[Path, Path]:
    from _common import export_and_quantize, make_run

    run = make_run(root / "scaffold", "tf_efficientnet_lite0", img_size=size, num_classes=10, images_per_class=20)
    export_and_quantize(run, "tensorrt")
    rng = np.random.default_rng(1)
    for c in range(10):
        (root / "new" / str(c)).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "new" / str(c) / f"{i}.png")
    return run, root / "new"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("data", type=Path, nargs="?", help="held-out images of the run's classes (ImageFolder)")
    ap.add_argument("--scaffold", type=int, metavar="SIZE", help="time an untrained Lite0 run at SIZE px instead")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--changes", nargs="+", default=list(CHANGES))
    args = ap.parse_args()

    from edgetl.shift import ShiftSettings
    from edgetl.shift.run import shift

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if args.scaffold:
            args.run, args.data = scaffold(Path(tmp), args.scaffold)
            args.changes = ["same"]
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("engines", "baseline-scratch", "bundles"))
        (run / "shift_reference.npz").unlink(missing_ok=True)
        rows = []
        for i, name in enumerate(args.changes):
            folder = Path(tmp) / name
            n = write_variant(args.data, folder, CHANGES[name])
            if i == 0:  # the training side, computed and cached once
                t = time.perf_counter()
                shift(run, ShiftSettings(data=str(folder), threads=args.threads))
                print(f"first check incl. the training side: {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            r = shift(run, ShiftSettings(data=str(folder), threads=args.threads))
            s = time.perf_counter() - t
            c, a, f = r.coverage, r.accuracy, r.features
            rows.append(f"| {name} | {n} | {s:.1f} | {n / s:.0f} | {f.verdict} | {f.mmd_p:.3g} | {f.above * 100:.0f}% "
                        f"| {c.uncovered if c else '-'}/{len(c.tensors) if c else '-'} "
                        f"| {c.int8_agreement * 100:.1f}% | {a.new_top1 * 100:.1f}% / {a.val_top1 * 100:.1f}% |"
                        if c and a else f"| {name} | {n} | {s:.1f} | {n / s:.0f} | {f.verdict} | {f.mmd_p:.3g} |")
        print(f"val {r.val_images} images, class means from {r.train_images} train images, int8 graph "
              f"{c.model_file if c else 'none'} (coverage vs {c.reference if c else '-'})")
        print("| images | n | s | images/s | features | MMD p | above val p95 | ranges not covered | int8 = fp32 "
              "| top-1 new / val |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
