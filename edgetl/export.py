"""torch -> ONNX: a self-describing graph (model card in metadata_props), checked against PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edgetl.errors import ExportError
from edgetl.io import atomic_path
from edgetl.models import load_trained
from edgetl.rundir import RunDir

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export(run_path: str | os.PathLike, opset: int = DEFAULT_OPSET, static_batch: int | None = None) -> Path:
    """Write RUN/model.onnx (fp32, dynamic batch unless `static_batch`) with the card in metadata_props."""
    import onnx

    run = RunDir(run_path)
    run.require(run.weights, hint="run `edgetl finetune` first")
    model, card = load_trained(run.weights)
    c, h, w = card.input_size
    example = torch.zeros(static_batch or 2, c, h, w)
    dynamic_axes = None if static_batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with atomic_path(run.onnx) as tmp:
        try:
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed for '{card.model}' ({str(e).strip().splitlines()[0]})") from None
        proto = onnx.load(str(tmp))
        card.write_onnx(proto)
        onnx.save(proto, str(tmp))
    return run.onnx
