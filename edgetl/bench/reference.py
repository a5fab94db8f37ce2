"""The accuracy a bench's top-1 drop is measured against."""

from __future__ import annotations

from typing import Any

from edgetl.bench.data import DataSource
from edgetl.errors import EdgetlError
from edgetl.portable.forms import REFERENCE_PRECISION
from edgetl.rundir import RunDir


def reference(run: RunDir, rows: list[dict], data: DataSource, batch_size: int) -> dict[str, Any]:
    """The accuracy the drop is measured against: the fine-tuned PyTorch fp32 model on the same images.

    Taken from the torch fp32 row when there is one; else scored here (CPU, accuracy only) when the run has
    model.safetensors; else (a device bundle without weights) the fp32 ONNX/engine row, said so.
    """
    for r in rows:
        if r["backend"] == "torch" and r["precision"] == REFERENCE_PRECISION and r["top1"] is not None:
            return {"top1": r["top1"], "source": "torch fp32 row"}
    if run.weights.exists():
        from edgetl.runtime import create_backend

        try:
            with create_backend("torch", run.weights, device="cpu", precision="fp32") as be:
                items, _ = data.labelled(be.card)
                if items is not None:
                    return {"top1": round(top1(be, items, batch_size), 6),
                            "source": "torch fp32 (model.safetensors, CPU), scored for the reference only"}
        except EdgetlError:
            pass
    from edgetl.runtime import backend_names

    for backend in backend_names():  # registry order: the first backend's fp32 row
        for r in rows:
            if r["backend"] == backend and r["precision"] == REFERENCE_PRECISION and r["top1"] is not None:
                return {"top1": r["top1"], "source": f"{backend} fp32 row (no model.safetensors here)"}
    return {"top1": None, "source": "none: no fp32 model scored on these images"}


def top1(backend, items, batch_size: int) -> float:
    from edgetl.evaluate.run import evaluate

    return evaluate(backend, items, batch_size)["top1"]  # the same top-1 `edgetl eval` reports
