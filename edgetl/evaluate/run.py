"""`edgetl eval`: score any backend on an image list, the same metrics whichever runtime produced the logits."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from edgetl.data import ImageList, iter_batches
from edgetl.errors import DataError
from edgetl.evaluate.settings import EvalSettings
from edgetl.metrics import Metrics, classification_metrics
from edgetl.runtime.base import Backend
from edgetl.stage import SILENT, Events


class EvalResult(Metrics):
    """The metrics, and which model file of which backend produced them (the `json_path` file)."""

    model_file: str
    backend: str
    precision: str


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
        logits.append(backend.logits(x, batch_size))  # a fixed-batch model runs the loaded batch in its own size
        labels.append(y)
        done += len(y)
        if progress:
            progress(done, len(items))
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(backend: Backend, items: ImageList, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    logits, labels = predict(backend, items, batch_size, progress)
    return classification_metrics(logits, labels, backend.card.class_names)


def eval_run(run_path: str | os.PathLike, cfg: EvalSettings | None = None, events: Events = SILENT) -> EvalResult:
    """Score one of the run's model files on `cfg.data` (default: the run's own val split); writes the settings
    to RUN/settings/eval.yaml and the result to `cfg.json_path` when given.

    Preprocessing comes from the card inside the model file that runs, never from the run's config.
    """
    from edgetl.data import read_splits, scan_folder
    from edgetl.rundir import RunDir
    from edgetl.runtime import backend_class, create_backend
    from edgetl.stage import record_settings

    cfg = cfg or EvalSettings()
    run = RunDir(run_path)
    cls = backend_class(cfg.backend)
    device = cls.device_for(cfg.device)
    model_file = cls.model_file(run, cfg.precision, device)
    events.status(f"evaluating {cfg.backend} {cfg.precision} ({model_file.name})")
    with create_backend(cfg.backend, model_file, device=device, precision=cfg.precision) as be:
        if cfg.data is None:
            run.require(run.splits, hint="give data DIR (an ImageFolder)")
            _, items = read_splits(run.splits)
        else:
            items = scan_folder(cfg.data, classes=be.card.class_names)
        metrics = evaluate(be, items, cfg.batch_size,
                           lambda done, total: events.progress("scoring", done, total))
    result = EvalResult(**metrics, model_file=str(model_file), backend=cfg.backend, precision=cfg.precision)
    try:
        record_settings(run.path, "eval", cfg)
    except OSError as e:  # eval only reads the run: a read-only run directory is still scored
        events.warning(f"settings not recorded in {run.path} ({e.strerror or e})")
    if cfg.json_path is not None:
        result.write(cfg.json_path)
    return result
