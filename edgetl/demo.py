"""`edgetl demo`: the whole chain on scikit-learn's digits, on whatever this machine has."""

from __future__ import annotations

from pathlib import Path

from edgetl.config import FinetuneConfig
from edgetl.console import console, finetune_events
from edgetl.data.demo import write_demo_data
from edgetl.finetune import finetune
from edgetl.io import read_json


def run_demo(out: Path, epochs: int = 8, model: str = "resnet18", img_size: int = 32, shots: int = 10) -> dict:
    out = Path(out)
    console.rule("edgetl demo: transfer learning on handwritten digits")
    data = write_demo_data(out / "data", size=img_size, shots=shots)
    console.print(f"data: source task digits 0-4 (all labels), target task digits 5-9 with {shots} labels per class "
                  f"-> {out / 'data'}", markup=False)
    common = dict(model=model, img_size=img_size, crop_pct=1.0, epochs=epochs, batch_size=32, augment="crop",
                  workers=0, pretrained=False, warmup_epochs=1.0)

    console.rule("1. source model: trained from scratch on digits 0-4")
    source = _train(FinetuneConfig(data=str(data["source"]), out=str(out / "source"), lr=3e-3, **common))

    # The target task has 50 images: 4x the epochs gives it about as many optimiser steps per run.
    target_common = {**common, "epochs": epochs * 4, "batch_size": 16}
    console.rule("2. transfer: source backbone, new head, fine-tuned on digits 5-9")
    transfer = _train(FinetuneConfig(data=str(data["target"]), out=str(out / "transfer"), weights=str(source),
                                     lr=3e-3, backbone_lr_scale=0.3, **target_common))
    console.rule("3. baseline: the same architecture and budget, from scratch")
    scratch = _train(FinetuneConfig(data=str(data["target"]), out=str(out / "scratch"), lr=3e-3, **target_common))

    results = {name: read_json(Path(path) / "metrics.json") for name, path in
               (("source (0-4)", source), ("transfer (5-9)", transfer), ("scratch (5-9)", scratch))}
    _print_comparison(results)
    bench = _deploy_chain(transfer)
    return {"source": source, "transfer": transfer, "scratch": scratch, "metrics": results, "bench": bench}


def _deploy_chain(run: Path) -> dict:
    """Make the transferred model fast: ONNX, int8 (TensorRT and CPU forms) and fp16, then the bench table."""
    from edgetl.bench import bench_run
    from edgetl.export import export
    from edgetl.quantize import QuantizeRequest, quantize
    from edgetl.report import print_bench

    console.rule("4. export to ONNX (parity against PyTorch on the val images)")
    export(run)
    parity = read_json(Path(run) / "export_report.json")["parity"]
    console.print(f"model.onnx: top-1 agreement {parity['top1_agreement']:.0%}, max |delta logit| "
                  f"{parity['max_abs_diff']:.2e}", markup=False)
    console.rule("5. quantize: int8 Q/DQ (TensorRT and CPU forms) and fp16, scored with ONNX Runtime")
    from edgetl.errors import QuantizeBudgetMissed

    entries = {}
    for request in (QuantizeRequest(precision="int8", target="both"), QuantizeRequest(precision="fp16")):
        try:
            entries.update(quantize(run, request, log=_say)["entries"])
        except QuantizeBudgetMissed as e:  # written and marked over budget: the demo says so and goes on
            _say(f"over budget: {e.message}")
            entries.update(e.result["entries"])
    for key, entry in entries.items():
        top1 = entry.get("int8_top1", entry.get("fp16_top1"))
        top1_text = "n/a" if top1 is None else f"{top1:.3f}"
        console.print(f"{key:14} top-1 {top1_text} (fp32 {entry['fp32_top1']:.3f}) -> {entry['model_file']}", markup=False)
    console.rule("6. benchmark what this machine can run")
    result = bench_run(run, backends=("torch", "onnxruntime", "tensorrt"), batch_sizes=(1, 8), warmup=5, iterations=30)
    print_bench(result)
    console.print(f"bench.json, bench.md, bench.png -> {run}", markup=False)
    return result


def _say(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True)


def _train(cfg: FinetuneConfig) -> Path:
    with finetune_events() as events:
        return finetune(cfg, overwrite=True, events=events).path


def _print_comparison(results: dict) -> None:
    from rich.table import Table

    table = Table(title="target task: 5 classes, 10 labelled images each")
    for col in ("run", "train images", "val images", "top-1", "macro F1", "AUC-ROC"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, m in results.items():
        table.add_row(name, str(m["train_images"]), str(m["n"]), f"{m['top1']:.3f}", f"{m['macro_f1']:.3f}",
                      f"{m['auc_roc']:.3f}" if m["auc_roc"] is not None else "n/a")
    console.print(table)
    gain = results["transfer (5-9)"]["top1"] - results["scratch (5-9)"]["top1"]
    console.print(f"transfer learning vs from scratch on the target task: {gain * 100:+.1f} points top-1", markup=False)
