"""`edgetl demo`: the whole chain on scikit-learn's digits, on whatever this machine has.

The setting is the one benchmarks/transfer_evidence.py measured (docs/BENCHMARKS.md, "Transfer learning"):
a source model made here without labels (rotation prediction on the unlabelled digit images), fine-tuned
in full to digits 5-9 with 10 labels per class, next to the same network trained from scratch on the
same images with the same budget, on several seeds; the gain is printed per seed and is never picked from
one lucky seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field, field_validator

from edgetl.choices import DemoSourceName
from edgetl.data.demo import write_demo_data
from edgetl.errors import EdgetlError
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.io import read_json
from edgetl.stage import SILENT, Events, Result, Settings, record_settings

STEPS = 50         # optimiser steps per target run, both arms (as in the evidence sweep)
BATCH = 16
HOLDOUT = 0.5      # share of each target class kept as val, never seen by any source
BACKBONE_LR_SCALE = 1.0
SOURCE_EPOCHS = {"rotation": 8, "digits04": 8}
SOURCES = ("rotation", "digits04")


class DemoSettings(Settings):
    """What `edgetl demo` runs: the setting of the transfer-evidence sweep, scaled by these few knobs."""

    epochs: Optional[int] = Field(None, ge=1, description="epochs per target run [default: 50 optimiser steps' worth]")
    model: str = Field("test_resnet", description="timm model name (test_resnet: a 0.4 M-parameter ResNet)")
    img_size: int = Field(16, ge=8, le=2048, description="digits are 8x8 pixels; 16 px keeps all of them")
    shots: int = Field(10, ge=1, le=80, description="labelled images per target class")
    seeds: int = Field(3, ge=1, le=10, description="repeats, each with its own labelled images and initialisation")
    source: DemoSourceName = "rotation"
    strategy: str = Field("full", description="linear | partial | full | lp-ft")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        import timm

        if not timm.is_model(value):
            raise ValueError(f"model {value}: timm does not know this model")
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from edgetl.models import STRATEGIES

        if value not in STRATEGIES:
            raise ValueError(f"strategy {value}: use one of {', '.join(STRATEGIES)}")
        return value


class DemoResult(Result):
    """Where the demo wrote its runs and what it found (each run directory holds the full record)."""

    source: Path
    transfer: Path  # the first seed's transferred run, which goes through export, quantize and bench
    runs: list[Path]
    seeds: list[dict[str, Any]]  # per seed: transfer and scratch top-1, gain, val images
    verdict: str
    bench: dict[str, Any]  # bench.json of the transferred run


def check_demo_out(out: Path) -> None:
    """The one check settings cannot make: the folder, before anything is written."""
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"out {out}: is a file; give a folder for the demo's data and runs")


def demo(out: str | Path, cfg: DemoSettings, events: Events = SILENT) -> DemoResult:
    """`edgetl demo`: data, source model, transfer vs scratch per seed, then export, quantize and bench."""
    show = events  # the name `events` reads as finetune's argument below; `show` is the demo's own
    out = Path(out)
    check_demo_out(out)
    record_settings(out, "demo", cfg)  # first: `cfg` is taken below by each target run's finetune settings
    epochs, model, img_size, shots, seeds, source, strategy = (cfg.epochs, cfg.model, cfg.img_size, cfg.shots,
                                                                cfg.seeds, cfg.source, cfg.strategy)
    n_train = shots * 5
    steps_per_epoch = max(1, n_train // BATCH)
    epochs = epochs or max(2, round(STEPS / steps_per_epoch))
    show.record("section", {"title": "edgetl demo: transfer learning on handwritten digits"})
    common = dict(model=model, img_size=img_size, crop_pct=1.0, augment="crop", workers=0, pretrained=False,
                  lr=3e-3, warmup_epochs=1.0)
    # The backbone fine-tunes at the full rate: with a 50-step budget the 0.1x default left the source's
    # features nearly unmoved and lost to scratch on every seed (docs/BENCHMARKS.md, "Transfer learning").
    target_recipe = dict(backbone_lr_scale=BACKBONE_LR_SCALE)
    data = write_demo_data(out / "data", size=img_size, shots=shots, holdout=HOLDOUT)
    n_unlabelled = sum(1 for _ in Path(data["unlabelled"]).iterdir())
    source_text = (f"rotation prediction on {n_unlabelled} unlabelled digit images (no labels; the target's val "
                   f"images excluded)" if source == "rotation" else "digits 0-4, trained with their labels")
    show.message(f"setting: target digits 5-9 with {shots} labelled image(s) per class; source: {source_text}; "
                 f"recipe: {strategy} at backbone-lr-scale {BACKBONE_LR_SCALE:g}, {epochs} epochs ({STEPS} steps of up "
                 f"to {BATCH} images), the same for the from-scratch baseline; {seeds} seed(s) (each draws its own "
                 "labelled images)")

    show.record("section", {"title": f"1. source model ({source})"})
    source_run = _source(source, data, out, {**common, "batch_size": 32, "seed": 0}, show)

    runs, rows = [], []
    for seed in range(seeds):
        show.record("section", {"title": f"2.{seed + 1} seed {seed}: transfer ({strategy}) and its from-scratch baseline"})
        target = data["target"] if seed == 0 else write_demo_data(out / f"data-seed{seed}", size=img_size,
                                                                  shots=shots, holdout=HOLDOUT, shot_seed=seed)["target"]
        cfg = FinetuneSettings(data=str(target), weights=str(source_run), strategy=strategy, epochs=epochs,
                               batch_size=BATCH, seed=seed, baseline="scratch", **target_recipe, **common)
        run = out / f"transfer-seed{seed}"
        finetune(run, cfg, show, overwrite=True)
        m = read_json(run / "metrics.json")
        runs.append(run)
        rows.append({"seed": seed, "transfer": m["top1"], "scratch": m["baseline"]["top1"],
                     "gain": m["baseline"]["gain_top1"], "val": m["n"]})
    verdict = _compare(rows, shots, strategy, source, show)
    bench = _deploy_chain(runs[0], show)
    return DemoResult(source=source_run, transfer=runs[0], runs=runs, seeds=rows, verdict=verdict, bench=bench)


def _source(source: str, data: dict, out: Path, settings: dict, events: Events) -> Path:
    from edgetl.pretrain import pretrain_rotation, unlabelled_images

    if source == "rotation":
        pretrain_rotation(unlabelled_images(data["unlabelled"]), out / "source", events=events,
                          epochs=SOURCE_EPOCHS[source], **settings)
    else:
        finetune(out / "source", FinetuneSettings(data=str(data["source"]), epochs=SOURCE_EPOCHS[source], **settings),
                 events, overwrite=True)
    return out / "source"


def _compare(rows: list[dict], shots: int, strategy: str, source: str, events: Events) -> str:
    """The per-seed table (a 'transfer' record) and the verdict over every seed."""
    events.record("transfer", {"rows": rows, "shots": shots, "strategy": strategy})
    gains = [r["gain"] for r in rows]
    mean = sum(gains) / len(gains)
    wins = sum(g > 0 for g in gains)
    if wins == len(gains):
        verdict = (f"transfer from the {source} source beats training from scratch on every seed ({wins}/{len(gains)}): "
                   f"mean gain {mean * 100:+.1f} points top-1")
    else:
        verdict = (f"transfer from the {source} source is NOT better than training from scratch on every seed: "
                   f"better on {wins}/{len(gains)}, mean gain {mean * 100:+.1f} points top-1")
    events.message(verdict)
    return verdict


def _deploy_chain(run: Path, events: Events) -> dict:
    """Make the transferred model fast: ONNX, int8 (TensorRT and CPU forms) and fp16, then the bench table."""
    from edgetl.bench import BenchSettings, bench
    from edgetl.export import export
    from edgetl.quantize import QuantizeSettings, quantize

    _say = events.message
    events.record("section", {"title": "3. export to ONNX (parity against PyTorch on the val images)"})
    export(run)
    parity = read_json(Path(run) / "export_report.json")["parity"]
    _say(f"model.onnx: top-1 agreement {parity['top1_agreement']:.0%}, max |delta logit| "
         f"{parity['max_abs_diff']:.2e}")
    events.record("section", {"title": "4. quantize: int8 Q/DQ (TensorRT and CPU forms) and fp16, scored with "
                                       "ONNX Runtime"})
    from edgetl.errors import QuantizeBudgetMissed

    entries = {}
    for cfg in (QuantizeSettings(precision="int8", target="both"), QuantizeSettings(precision="fp16")):
        try:
            entries.update(quantize(run, cfg, events).entries)
        except QuantizeBudgetMissed as e:  # written and marked over budget: the demo says so and goes on
            _say(f"over budget: {e.message}")
            entries.update(e.result.entries)
    for key, entry in entries.items():
        top1_text = "n/a" if entry.top1 is None else f"{entry.top1:.3f}"
        _say(f"{key:14} top-1 {top1_text} (fp32 {entry.fp32_top1:.3f}) -> {entry.model_file}")
    events.record("section", {"title": "5. benchmark what this machine can run"})
    result = bench(run, BenchSettings(backends=["torch", "onnxruntime", "tensorrt"], batch_sizes=[1, 8], warmup=5,
                                      iterations=30), events).model_dump(mode="json")
    events.record("bench_table", result)  # the whole result; bench itself records each row as "bench"
    _say(f"bench.json, bench.md, bench.png -> {run}")
    return result
