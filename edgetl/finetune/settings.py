"""What `edgetl finetune` takes: its settings, checked before any image is read or file written.

The run's config.yaml is these settings as resolved, plus `out` (where the run was written: other code recognises
a run by its config.yaml's data/out/model keys). `out` is not a setting: the run argument of `finetune()` (the CLI's
--out) says where a run goes, so a settings file's `out` is read and ignored.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from edgetl.choices import BaselineName, DistBackendName, StrategyName, CheckModeName
from edgetl.choices import DIST_TIMEOUT_MAX, IMG_SIZE_MAX, IMG_SIZE_MIN, SEED_MAX
from edgetl.errors import EdgetlError
from edgetl.models import strategy_phases
from edgetl.stage import Settings



class FinetuneSettings(Settings):
    data: str = Field(description="ImageFolder: DATA/train/<class>, DATA/val/<class>, or DATA/<class> (split)")
    model: str = Field("resnet50", description="timm model name")
    pretrained: bool = Field(True, description="hub weights via timm")
    weights: str | None = Field(default=None, description="local weights: .safetensors, .pth or an edgetl run dir")
    strategy: StrategyName = Field("full", description="linear | partial | full | lp-ft (linear probe, then full at "
                                   "lr x backbone_lr_scale)")
    lp_epochs: int | None = Field(default=None, ge=1, description="with strategy lp-ft: linear-probe epochs",
                                  json_schema_extra={"default_text": "half"})
    unfreeze: int = Field(default=1, ge=0, description="with strategy partial: last N stages trained")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1, description="the global batch, over all processes and accumulation "
                            "steps")
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False,
                      description="head learning rate, for the global batch (never scaled with the process count)")
    backbone_lr_scale: float = Field(default=0.1, ge=0, description="backbone lr = lr x this")
    # A lone linear head on frozen features is a convex problem that takes a high rate, and it starts at zero: at
    # lr 1e-3 it ended 21 points below scikit-learn's logistic regression on the same features, at 3e-2 (and on
    # un-augmented images) 0.4 below on average (ImageNet Lite0 on 10 digits a class, docs/BENCHMARKS.md
    # "Transfer from ImageNet").
    linear_lr_scale: float = Field(default=30.0, gt=0, description="head-only phases (strategy linear, lp-ft's "
                                   "probe) train at lr x this")
    linear_augment: bool = Field(default=False, description="augment in head-only phases too (off: they see the "
                                 "images as evaluation does)")
    layer_decay: float | None = Field(default=None, gt=0, le=1,
                                      description="timm layer-wise lr decay instead of one backbone scale")
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    freeze_bn_stats: bool = Field(default=True, description="BatchNorm keeps the source's running statistics while "
                                  "its weights train (from scratch it always learns them)")
    img_size: int | None = Field(default=None, ge=IMG_SIZE_MIN, le=IMG_SIZE_MAX, description="input size",
                                 json_schema_extra={"default_text": "the model's pretrained size"})
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    augment: str = Field("flip", description="none | crop | flip | strong, or an albumentations YAML")
    val_fraction: float = Field(0.2, description="val share when DATA has no train/val split")
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    workers: int = Field(default=2, ge=0, description="data loader processes")
    device: str = Field("auto", description="auto | cpu | cuda[:N] (under torchrun: auto | cpu | cuda)")
    amp: bool = Field(True, description="mixed precision on GPU")
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the model")
    patience: int | None = Field(default=None, ge=1, description="early stopping after N epochs without improvement")
    skip_bad_images: bool = Field(False, description="skip unreadable images and list them")
    check: CheckModeName = Field(default="full", description="check every image before training: full (decode; "
                                 "cached per file, so a second run checks only what changed) | header (open only, "
                                 "fast) | none; an image failing later is skipped and listed in RUN/bad_images.json")
    baseline: BaselineName | None = Field(default=None, description="scratch: also train the from-scratch twin "
                                          "(same data, recipe, budget) in RUN/baseline-scratch and report the gain; "
                                          "probe: also fit a logistic regression on the source's frozen pooled "
                                          "features (seconds) and warn when the fine-tune ends below it")
    # Several processes (torchrun); a one-process run ignores all but `accumulate`.
    accumulate: int = Field(default=1, ge=1, description="gradient accumulation: micro-batches per optimizer step")
    sync_bn: bool = Field(default=False, description="under torchrun on GPUs: SyncBatchNorm across processes")
    dist_backend: DistBackendName = Field(default="auto", description="under torchrun: auto (nccl on CUDA, gloo on "
                                          "the CPU) | nccl | gloo")
    dist_timeout: float = Field(default=1800.0, gt=0, le=DIST_TIMEOUT_MAX, description="under torchrun: seconds to "
                                "wait for another process before stopping")

    @model_validator(mode="after")
    def _weights_win(self) -> "FinetuneSettings":
        # Weights from a file replace the hub's: config.yaml must not say the run started from hub weights.
        if self.weights is not None and self.pretrained:
            self.pretrained = False
        return self

    @model_validator(mode="before")
    @classmethod
    def _drop_recorded_out(cls, data: Any) -> Any:
        if isinstance(data, dict) and "out" in data:
            data = {k: v for k, v in data.items() if k != "out"}
        return data


def check_plan(cfg: FinetuneSettings) -> None:
    """Settings that only make sense together. baseline scratch compares a transfer run with its twin: the run
    itself must start from weights."""
    strategy_phases(cfg.strategy, cfg.epochs, cfg.lp_epochs)
    if cfg.baseline == "scratch" and cfg.weights is None and not cfg.pretrained:
        raise EdgetlError("baseline 'scratch': this run has no source weights, so it is the from-scratch run itself",
                          "give weights or pretrained, or drop baseline")
    if cfg.baseline == "probe" and cfg.weights is None and not cfg.pretrained:
        raise EdgetlError("baseline 'probe': this run has no source weights, so there are no source features to probe",
                          "give weights or pretrained, or drop baseline")


def per_process_batch(cfg: FinetuneSettings, world_size: int) -> int:
    """Images per process and micro-step: the global batch split over processes and accumulation steps."""
    parts = world_size * cfg.accumulate
    if cfg.batch_size % parts:
        raise EdgetlError(f"batch_size {cfg.batch_size}: the global batch does not split into {world_size} "
                          f"process(es) x accumulate {cfg.accumulate}",
                          f"give a batch_size that is a multiple of {parts}")
    return cfg.batch_size // parts


def baseline_settings(cfg: FinetuneSettings) -> FinetuneSettings:
    """The from-scratch twin: the same data, recipe, budget and seed, no source weights. Every layer trains
    (a random backbone has nothing to freeze or protect, the rule that also trains it at the full rate)."""
    return cfg.model_copy(update={"weights": None, "pretrained": False, "strategy": "full", "lp_epochs": None,
                                  "baseline": None})


def config_yaml(cfg: FinetuneSettings, out: str, world_size: int) -> str:
    """config.yaml: the settings with `out` after `data` (the keys earlier runs have), and a comment that states
    the batch arithmetic of this run, which depends on how many processes trained it."""
    data = cfg.model_dump(mode="json")
    ordered = {"data": data.pop("data"), "out": out, **data}
    per = cfg.batch_size // (world_size * cfg.accumulate)
    note = (f"# global batch {cfg.batch_size} (batch_size) = {world_size} process(es) x {per} image(s) x accumulate "
            f"{cfg.accumulate}; lr {cfg.lr:g} applies to the global batch, unscaled\n")
    return note + yaml.safe_dump(ordered, sort_keys=False)


def read_config(text: str) -> FinetuneSettings:
    return FinetuneSettings.model_validate(yaml.safe_load(text))
