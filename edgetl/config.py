"""Settings, one pydantic model per stage: loadable from YAML, overridden by command-line options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgetl.choices import CheckModeName
from edgetl.errors import EdgetlError, first_line

T = TypeVar("T", bound=BaseModel)


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    out: str
    model: str = "resnet50"
    pretrained: bool = True
    weights: str | None = Field(default=None, description=".safetensors, .pth or an edgetl run dir")
    strategy: Literal["linear", "partial", "full", "lp-ft"] = "full"
    lp_epochs: int | None = Field(default=None, ge=1, description="--strategy lp-ft: linear-probe epochs [half]")
    unfreeze: int = Field(default=1, ge=0, description="stages trained with --strategy partial")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    backbone_lr_scale: float = Field(default=0.1, ge=0)
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    img_size: int | None = Field(default=None, ge=8, le=2048, description="default: the model's pretrained size")
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    augment: str = "flip"
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = Field(default=2, ge=0)
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    patience: int | None = Field(default=None, ge=1, description="early stopping: epochs without improvement")
    skip_bad_images: bool = False
    check: CheckModeName = Field(default="full", description="up-front image check: full (decode, cached per "
                                 "file) | header | none; images failing later in training are skipped and listed")
    baseline: Literal["scratch"] | None = Field(default=None, description="also train the from-scratch twin")


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: dict[str, Any]) -> T:
    """YAML file (if any) first, then every option given on the command line (None = not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise EdgetlError(f"{path}: cannot read config ({first_line(e)})") from None
        if not isinstance(data, dict):
            raise EdgetlError(f"{path}: a config file must be a YAML mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise EdgetlError(f"setting '{where}': {err['msg']}") from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
