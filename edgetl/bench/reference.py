"""The accuracy a bench's top-1 drop is measured against."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.bench.data import DataSource
from edgetl.errors import EdgetlError
from edgetl.portable.forms import REFERENCE_PRECISION
from edgetl.rundir import RunDir


def reference(run: RunDir, rows: list[dict], data: DataSource, batch_size: int,
              right: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray | None]:
    """The accuracy the drop is measured against: the fine-tuned PyTorch fp32 model on the same images, and
    which of them it got right (for the image-by-image test of each row's drop; `right` holds each row's).

    Taken from the torch fp32 row when there is one; else scored here (CPU, accuracy only) when the run has
    model.safetensors; else (a device bundle without weights) the fp32 ONNX/engine row, said so.
    """
    for r in rows:
        if r["backend"] == "torch" and r["precision"] == REFERENCE_PRECISION and r["top1"] is not None:
            return {"top1": r["top1"], "source": "torch fp32 row"}, right.get(row_label(r))
    if run.weights.exists():
        from edgetl.runtime import create_backend

        try:
            with create_backend("torch", run.weights, device="cpu", precision="fp32") as be:
                items, _ = data.labelled(be.card)
                if items is not None:
                    top1, ok = scored(be, items, batch_size)
                    return {"top1": round(top1, 6),
                            "source": "torch fp32 (model.safetensors, CPU), scored for the reference only"}, ok
        except EdgetlError:
            pass
    from edgetl.runtime import backend_names

    for backend in backend_names():  # registry order: the first backend's fp32 row
        for r in rows:
            if r["backend"] == backend and r["precision"] == REFERENCE_PRECISION and r["top1"] is not None:
                return ({"top1": r["top1"], "source": f"{backend} fp32 row (no model.safetensors here)"},
                        right.get(row_label(r)))
    return {"top1": None, "source": "none: no fp32 model scored on these images"}, None


def row_label(row: dict) -> str:
    return f"{row['backend']} {row['precision']}"


def scored(backend, items, batch_size: int) -> tuple[float, np.ndarray]:
    """Top-1 (the same `edgetl eval` reports) and which images the backend got right."""
    from edgetl.evaluate.run import predict
    from edgetl.metrics import top1

    logits, labels = predict(backend, items, batch_size)
    return top1(logits, labels), logits.argmax(1) == labels


def drop_tests(reference_right: np.ndarray | None, right: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per scored row (backend and precision), McNemar's exact test of its drop against the reference on the
    same images: whether the drop is more than the luck of which images were scored."""
    from edgetl.metrics import SIGNIFICANCE, mcnemar

    if reference_right is None:
        return {}
    tests = {}
    for label, ok in right.items():
        if len(ok) == len(reference_right):
            b, c, p = mcnemar(reference_right, ok)
            tests[label] = {"n": len(ok), "only_reference_right": b, "only_model_right": c, "p_value": p,
                            "significant": p < SIGNIFICANCE}
    return tests
