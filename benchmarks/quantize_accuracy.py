"""INT8 top-1 vs fp32 on the demo digits data, for a resnet-family and a mobilenet-family model.

Each model is trained from scratch (no hub download here) on the digits source task (0-4, 32 px),
exported, and quantized by `edgetl.quantize` in both int8 forms; calibration from the run's train split,
scoring on its val split, as `edgetl quantize` does. Target: drop <= 0.5 point (see docs/BENCHMARKS.md).

    python benchmarks/quantize_accuracy.py [--models resnet18 mobilenetv2_050] [--epochs 10] [--img-size 32] [--method minmax]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path


def main() -> None:
    from edgetl.data.demo import write_demo_data
    from edgetl.errors import QuantizeBudgetMissed
    from edgetl.export import export
    from edgetl.finetune import FinetuneSettings, finetune
    from edgetl.quantize import QuantizeSettings, quantize

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2_050"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--img-size", type=int, default=32, help="digits are upscaled to this (mobile nets want 64+)")
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="edgetl-qacc-"))
    data = write_demo_data(root / "data", size=args.img_size)
    rows = []
    for model in args.models:
        out = root / model
        t = time.time()
        finetune(out, FinetuneSettings(data=str(data["source"]), model=model, pretrained=False, img_size=args.img_size,
                                       crop_pct=1.0, epochs=args.epochs, batch_size=32, lr=3e-3, backbone_lr_scale=1.0,
                                       augment="crop", workers=0, warmup_epochs=1.0), overwrite=True)
        export(out)
        train_s = time.time() - t
        try:
            res = quantize(out, QuantizeSettings(precision="int8", target="both", method=args.method,
                                                 max_drop=args.max_drop))
        except QuantizeBudgetMissed as e:  # written and marked over budget: still a row of the table
            res = e.result
        for key, e in res.entries.items():
            before = e.methods_tried[e.method].top1
            rows.append((model, key, e.eval_n, e.fp32_top1, before, e.top1, e.drop, e.method, len(e.excluded), train_s))
    print(f"date: {datetime.date.today()}; digits source task (5 classes, {args.img_size} px), {args.epochs} epochs from scratch")
    print("| model | form | val images | fp32 top-1 | int8 top-1 before exclusion | int8 top-1 written | drop (pt) "
          "| method | nodes kept float |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for m, k, n, f, b, q, d, meth, ex, _ in rows:
        print(f"| {m} | {k} | {n} | {f * 100:.2f} | {b * 100:.2f} | {q * 100:.2f} | {d:+.2f} | {meth} | {ex} |")


if __name__ == "__main__":
    main()
