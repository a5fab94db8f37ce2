"""The training side of a shift check, computed once per model and cached in RUN/shift_reference.npz: the train
split's class means and shared covariance, the val split's own pass (scores, features, coverage, int8 logits)
that gives every new set's numbers their meaning, and how much of each int8 range the calibration images
themselves overflow (none with minmax; a little by design with percentile or entropy). The cache is keyed by the content of the graphs and
of the splits file and by the settings that shape it; anything else is a miss and is recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.card import ModelCard
from edgetl.data import ImageList, read_splits
from edgetl.errors import EdgetlError, RunDirError
from edgetl.integrity import file_sha256
from edgetl.io import atomic_path
from edgetl.portable.forms import INT8, Form
from edgetl.rundir import RunDir
from edgetl.shift.activations import Graphs, Pass, run_pass
from edgetl.shift.scores import Gaussian, fit_gaussian, mahalanobis
from edgetl.shift.settings import ShiftSettings
from edgetl.stage import Events

CACHE_FORMAT = "edgetl-shift-reference/1"


@dataclass
class Reference:
    gaussian: Gaussian
    val: Pass
    val_scores: np.ndarray
    train_images: int
    calib_outside: np.ndarray | None = None  # (images, tensors) on the int8 graph's own calibration images


def int8_entry(run: RunDir, form: Form):
    """The quant_report.json entry of the run's int8 graph of `form` (None without one)."""
    from edgetl.quantize.report import read_report

    return read_report(run.path).entries.get(form.report_key)


def calibration_images(run: RunDir, card: ModelCard, form: Form) -> ImageList | None:
    """The images the int8 graph was calibrated on, checked against the hash quant_report.json holds for that
    graph: those RUN/settings/quantize.yaml names if the last quantize was an int8 one, else the default (a
    sample of the train split). None when neither matches (the folder moved or changed): coverage is then read
    against val."""
    from edgetl.calibration.sampling import calibration_items, items_hash
    from edgetl.quantize.settings import QuantizeSettings
    from edgetl.stage import load_settings

    try:
        entry = int8_entry(run, form)
        if entry is None or not getattr(entry, "calib_hash", None):
            return None
        tried = [(None, 0)]  # quantize's default calibration
        if run.settings_file("quantize").is_file():
            q = load_settings(QuantizeSettings, run.settings_file("quantize"))
            if q.precision == INT8:
                tried.insert(0, (q.calib, q.seed))
        for calib, seed in tried:  # calib_size as recorded: the images used, which the sample then keeps
            items = calibration_items(run, card, calib, entry.calib_size, seed)
            if items_hash(items) == entry.calib_hash:
                return items
    except (EdgetlError, OSError):
        pass
    return None


def _key(run: RunDir, graphs: Graphs, cfg: ShiftSettings) -> str:
    quantize = run.settings_file("quantize")  # which images calibrated the int8 graph
    int8 = graphs.int8_path
    # file_sha256: cached, and both graphs were just hashed when their cards were checked against the reports
    return json.dumps({"format": CACHE_FORMAT, "fp32": file_sha256(run.onnx), "splits": file_sha256(run.splits),
                       "quantize": quantize.read_text() if quantize.is_file() else None,
                       "int8": file_sha256(int8) if int8 else None, "tensors": [r.tensor for r in graphs.ranges],
                       "reference_images": cfg.reference_images}, sort_keys=True)


def _load(path: Path, key: str) -> Reference | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            int8 = z["val_int8_logits"] if z["has_int8"] else None
            val = Pass(labels=z["val_labels"], logits=z["val_logits"], features=z["val_features"],
                       outside=z["val_outside"], int8_logits=int8)
            g = Gaussian(means=z["means"], precision=z["precision"], center=z["center"], scale=z["scale"])
            return Reference(gaussian=g, val=val, val_scores=z["val_scores"], train_images=int(z["train_images"]),
                             calib_outside=z["calib_outside"] if z["has_calib"] else None)
    except (OSError, KeyError, ValueError):  # missing, another format, or torn: recompute
        return None


def _save(path: Path, key: str, ref: Reference) -> None:
    g, val = ref.gaussian, ref.val
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), means=g.means, precision=g.precision, center=g.center, scale=g.scale,
                     val_labels=val.labels, val_logits=val.logits, val_features=val.features,
                     val_outside=val.outside, has_int8=np.array(val.int8_logits is not None),
                     val_int8_logits=val.int8_logits if val.int8_logits is not None else np.zeros((0,)),
                     val_scores=ref.val_scores, train_images=np.array(ref.train_images),
                     has_calib=np.array(ref.calib_outside is not None),
                     calib_outside=ref.calib_outside if ref.calib_outside is not None else np.zeros((0,)))


def reference(run: RunDir, card: ModelCard, graphs: Graphs, cfg: ShiftSettings, events: Events) -> Reference:
    """The run's reference statistics, from the cache when it matches, else computed and cached."""
    run.require(run.splits, hint="edgetl shift compares with the run's own train and val splits (edgetl finetune)")
    path = run.shift_reference
    key = _key(run, graphs, cfg)
    cached = _load(path, key)
    if cached is not None:
        events.message(f"training-side statistics from {path.name}")
        return cached
    train, val_items = read_splits(run.splits)
    train = train.spread(cfg.reference_images)
    events.status(f"fitting class means and covariance on {len(train)} train images")
    common = dict(batch_size=cfg.batch_size, threads=cfg.threads)
    fitted = run_pass(graphs, card, train, coverage=False, int8=False,
                      progress=lambda d, t: events.progress("train split", d, t), **common)
    g = fit_gaussian(fitted.features, fitted.labels, card.num_classes)
    val = run_pass(graphs, card, val_items, progress=lambda d, t: events.progress("val split", d, t), **common)
    ref = Reference(gaussian=g, val=val, val_scores=mahalanobis(val.features, g), train_images=len(train))
    calib = calibration_images(run, card, graphs.int8_form) if graphs.ranges else None
    if calib is not None:
        ref.calib_outside = run_pass(graphs, card, calib, int8=False, **common,
                                     progress=lambda d, t: events.progress("calibration images", d, t)).outside
    try:
        _save(path, key, ref)
    except (OSError, RunDirError) as e:  # a cache: a read-only run is still checked
        events.warning(f"{path.name} not written ({getattr(e, 'strerror', None) or e})")
    return ref
