"""Score any backend on an image list: the same metrics whichever runtime produced the logits."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgetl.data import ImageList, iter_batches
from edgetl.errors import DataError, EdgetlError
from edgetl.metrics import classification_metrics
from edgetl.runtime.base import Backend


def predict(backend: Backend, items: ImageList, batch_size: int = 64,
            progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every image, fed in the backend's card's input format."""
    backend.activate()
    card = backend.card
    if list(items.classes) != list(card.class_names):
        # scan_folder(DIR, classes=card.class_names) gives the model's label order; anything else is a bug upstream
        raise DataError(f"image list classes {items.classes} differ from the model's {card.class_names}",
                        "read the folder with scan_folder(DIR, classes=card.class_names)")
    logits, labels, done = [], [], 0
    for x, y in iter_batches(items, card, batch_size):
        logits.append(backend.infer(x))
        labels.append(y)
        done += len(y)
        if progress:
            progress(done, len(items))
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(backend: Backend, items: ImageList, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    logits, labels = predict(backend, items, batch_size, progress)
    return classification_metrics(logits, labels, backend.card.class_names)


def eval_run(run_path, data=None, backend: str = "torch", precision: str = "fp32", device: str = "cpu",
             batch_size: int = 64, progress=None) -> dict[str, Any]:
    """`edgetl eval`: score one of the run's model files on DATA (default: the run's own val split).

    Preprocessing comes from the card inside the model file that runs, never from the run's config.
    """
    from edgetl.data import read_splits, scan_folder
    from edgetl.rundir import RunDir
    from edgetl.runtime import create_backend, resolve_model_file

    if batch_size < 1:
        raise EdgetlError(f"--batch-size {batch_size}: give a count >= 1")
    run = RunDir(run_path)
    if backend == "tensorrt":
        device = "cuda"  # an engine runs only on the GPU it was built for
    model_file = resolve_model_file(run, backend, precision, device)
    with create_backend(backend, model_file, device=device, precision=precision) as be:
        if data is None:
            run.require(run.splits, hint="pass --data DIR")
            _, items = read_splits(run.splits)
        else:
            items = scan_folder(data, classes=be.card.class_names)
        metrics = evaluate(be, items, batch_size, progress)
    metrics["model_file"] = str(model_file)
    metrics["backend"] = backend
    metrics["precision"] = precision
    return metrics
