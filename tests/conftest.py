"""Shared fixtures: small real data (scikit-learn digits) and a tiny trained run, built once per session.

Fixtures that return a shared run directory must not be written to: copy it first (`run_copy`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgetl.data.demo import write_demo_data
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.stage import Events

_TRAINED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """source/{train,val}/0..4 (~64 train + 16 val per class) and target/{train,val}/5..9 (10 shots)."""
    root = tmp_path_factory.mktemp("digits")
    return write_demo_data(root, size=32, shots=10, per_class_limit=80)


def tiny_config(data: Path, model: str = "resnet18", **overrides) -> FinetuneSettings:
    """A few-second CPU run: 32 px, no hub download, no worker processes."""
    settings = dict(data=str(data), model=model, pretrained=False, img_size=32, crop_pct=1.0,
                    epochs=5, batch_size=16, lr=5e-3, augment="crop", workers=0, warmup_epochs=0.5)
    settings.update(overrides)
    return FinetuneSettings(**settings)


class Recorder(Events):
    """Events that keep the messages and warnings, and call `on_epoch(row)` after each finished epoch (a test
    raises there to interrupt a run at a known point)."""

    def __init__(self, on_epoch=None):
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.on_epoch = on_epoch

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def record(self, kind: str, data: dict) -> None:
        if kind == "epoch" and self.on_epoch is not None:
            self.on_epoch(data)


@pytest.fixture(scope="session")
def train_run(tmp_path_factory, digits):
    """Factory: train_run(model) -> a finished run dir on the digits source task, cached per model."""

    def make(model: str = "resnet18", epochs: int = 5) -> Path:
        key = f"{model}-{epochs}"
        if key not in _TRAINED:
            out = tmp_path_factory.mktemp(f"run-{model}")
            finetune(out, tiny_config(digits["source"], model=model, epochs=epochs), overwrite=True)
            _TRAINED[key] = out
        return _TRAINED[key]

    return make


@pytest.fixture(scope="session")
def trained_run(train_run) -> Path:
    """resnet18 trained 5 epochs on digits 0-4 (val top-1 is well above chance). Read-only: see run_copy."""
    return train_run("resnet18")


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private, writable copy of `trained_run`."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


@pytest.fixture(scope="session")
def exported_copy(trained_run, tmp_path_factory):
    """Factory: exported_copy(name) -> a private, writable copy of `trained_run` with model.onnx exported
    (the export runs once per session; every call gets its own folder, named `name`)."""
    from edgetl.export import export

    master = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, master)
    export(master)

    def make(name: str = "run") -> Path:
        dst = tmp_path_factory.mktemp("exported-copy") / name
        shutil.copytree(master, dst)
        return dst

    return make


@pytest.fixture(scope="session")
def family_graphs(tmp_path_factory):
    """Factory: family_graphs(model) -> a random-init run (32 px, 4 classes) of a timm family with
    model.onnx, model.int8.onnx (TensorRT form) and model.fp16.onnx written by edgetl's own export and
    quantize, made once per session. Read-only: copy it before writing. Graph structure and NVIDIA's
    parser/builder need no trained weights."""
    from edgetl.scaffold import export_and_quantize, make_run

    made: dict[str, Path] = {}

    def make(model: str) -> Path:
        if model not in made:
            run = make_run(tmp_path_factory.mktemp(f"family-{model}"), model, img_size=32, num_classes=4,
                           images_per_class=4)
            export_and_quantize(run, "tensorrt", fp16=True)
            made[model] = run
        return made[model]

    return make


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory) -> Path:
    """The image-check cache of every test (and of the CLI subprocesses they start) in a session folder, never
    the user's ~/.cache: a test's verdicts must not leak into a real run, nor a real run's into a test."""
    import os

    folder = tmp_path_factory.mktemp("edgetl-cache")
    before = os.environ.get("EDGETL_CACHE_DIR")
    os.environ["EDGETL_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("EDGETL_CACHE_DIR", None)
    else:
        os.environ["EDGETL_CACHE_DIR"] = before
