"""What `edgetl finetune` gives: RUN/metrics.json, as a model (one key per fact)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from edgetl.metrics import Metrics


class BaselineComparison(BaseModel):
    """The transfer run against its from-scratch twin (baseline scratch, in RUN/baseline-scratch), or against the
    frozen-feature floor (baseline probe: a logistic regression on the source's pooled features; no run folder).
    `negative_transfer` says the run ended below the baseline."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    run: str | None = None
    top1: float
    macro_f1: float
    gain_top1: float
    gain_macro_f1: float
    negative_transfer: bool


class PhaseSpan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: str
    first_epoch: int  # 1-based, as in train_log.csv
    epochs: int


class FinetuneResult(Metrics):
    """The best checkpoint scored exactly as `edgetl eval` scores it (the Metrics fields), and how it was trained.
    The best epoch is chosen on val (`chosen_on`); the Metrics fields score it on DATA/test once, where the data
    has one, else on val again, which is optimistic (`scored_on` says which)."""

    chosen_on: str = "val"
    scored_on: str = "val"
    best_val_top1: float | None = None  # the val top-1 that chose the epoch (train_log.csv's)

    # the training
    best_epoch: int
    epochs_run: int
    train_seconds: float
    model: str
    strategy: str
    trainable_params: int
    frozen_params: int
    loaded_params: int
    new_params: int
    source_weights: dict[str, Any]
    phases: list[PhaseSpan]
    train_images: int
    device: str
    world_size: int = 1  # processes that trained it (torchrun); runs before this key had one
    baseline: BaselineComparison | None = None

    def write(self, path):
        from pathlib import Path

        from edgetl.io import write_json

        # A run without a twin has no baseline key at all, as before.
        write_json(Path(path), self.model_dump(mode="json", exclude_none=False,
                                               exclude={"baseline"} if self.baseline is None else set()))
        return Path(path)
