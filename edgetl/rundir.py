"""The run directory: the spine every stage reads from and writes to. Names live here only."""

from __future__ import annotations

import os
from pathlib import Path

from edgetl.errors import RunDirError


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # finetune
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def train_log(self) -> Path:
        return self.path / "train_log.csv"

    @property
    def checkpoint(self) -> Path:
        """Resume state of the last finished epoch (model, optimizer, scheduler, RNG)."""
        return self.path / "last_checkpoint.pt"

    @property
    def splits(self) -> Path:
        """The exact train/val file lists, so later stages score the same validation images."""
        return self.path / "splits.json"

    # export / quantize
    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def export_report(self) -> Path:
        return self.path / "export_report.json"

    def onnx_for(self, precision: str, target: str = "tensorrt") -> Path:
        """model.onnx (fp32), model.fp16.onnx, model.int8.onnx (TensorRT Q/DQ), model.int8.cpu.onnx."""
        if precision == "fp32":
            return self.onnx
        if precision == "int8" and target == "cpu":
            return self.path / "model.int8.cpu.onnx"
        return self.path / f"model.{precision}.onnx"

    @property
    def quant_report(self) -> Path:
        return self.path / "quant_report.json"

    @property
    def calib_cache_dir(self) -> Path:
        return self.path / "calib_cache"

    # build / bench / deploy
    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"

    @property
    def bench_json(self) -> Path:
        return self.path / "bench.json"

    @property
    def bench_md(self) -> Path:
        return self.path / "bench.md"

    @property
    def bench_png(self) -> Path:
        return self.path / "bench.png"

    @property
    def devices_dir(self) -> Path:
        return self.path / "devices"

    @property
    def bundles_dir(self) -> Path:
        return self.path / "bundles"

    @property
    def triton_dir(self) -> Path:
        return self.path / "triton"

    def require(self, *paths: Path, hint: str) -> None:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory", "give the folder that `edgetl finetune --out` wrote")
        for p in paths:
            if not p.exists():
                raise RunDirError(f"{self.path}: {p.name} is missing", hint)
