"""`shift(run, cfg, events)`: the stage. One pass over the new images gives three answers, each with a verdict:
do they look like the training data (features), do the int8 graph's calibrated ranges cover them (coverage),
and, where they are labelled, how accurate the model is on them next to val (accuracy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edgetl.card import ModelCard
from edgetl.data import ImageList, scan_folder
from edgetl.data.folder import image_files
from edgetl.data.images import is_image_file
from edgetl.errors import DataError, FormMismatch
from edgetl.metrics import PairedDrop, paired_drop, top1_agreement
from edgetl.portable.forms import INT8, S8S8, U8S8, graph_mismatch
from edgetl.quantize.scoring import SCORING_OF_FORM
from edgetl.rundir import RunDir
from edgetl.shift.activations import Graphs, Pass, feature_tensor, int8_ranges, run_pass
from edgetl.shift.reference import Reference, int8_entry, reference
from edgetl.shift.scores import (above_share, accuracy_difference, mahalanobis, mmd_test, spread, tensor_outside,
                                 uncovered)
from edgetl.shift.settings import ShiftSettings
from edgetl.stage import SILENT, Events, Result, record_settings

LOOKS_LIKE = "looks like training"
SHIFTED = "shifted: accuracy likely lower"
COVERED = "int8 ranges cover it"
MMD_MIN_IMAGES = 2  # per side: a two-sample test needs two of each
NOT_COVERED = "int8 ranges do not cover it: re-calibrate with these images"


class FeatureShift(Result):
    """How far the new images sit from training, in the model's penultimate features."""

    score: str = "mahalanobis"  # distance to the nearest train class mean, shared (Ledoit-Wolf) covariance
    quantile: float
    threshold: float  # val's `quantile` percentile of the score
    above: float  # share of new images above it
    above_expected: float
    above_p: float  # one-sided Mann-Whitney test: new scores larger than val's
    median_score: float
    val_median_score: float
    mmd2: Optional[float]  # None with fewer than MMD_MIN_IMAGES on a side: the verdict is then the rank test's
    mmd_p: Optional[float]  # permutation test, new vs val features
    mmd_images: List[int]  # [new, val] images in the test
    shifted: bool
    verdict: str


class TensorCoverage(Result):
    tensor: str
    new: float  # share of the tensor's values outside its int8 range on the new images
    val: float
    calibration: Optional[float] = None  # on the int8 graph's calibration images, where they could be rebuilt
    covered: bool


class Coverage(Result):
    """Whether the int8 graph's calibrated activation ranges hold the new images' activations."""

    model_file: str
    reference: str  # what a tensor's overflow is compared with: "calibration images" or "val split"
    tensors: List[TensorCoverage]  # worst first
    uncovered: int
    val_uncovered: int  # tensors whose range val overflows too (only against the calibration images)
    int8_agreement: float  # share of new images whose int8 top-1 class is fp32's
    val_int8_agreement: float
    verdict: str
    command: Optional[str] = None


class ClassAccuracy(Result):
    n: int
    val: Optional[float]
    new: float


class Accuracy(Result):
    """Top-1 on the labelled new images next to val's (fp32 graph), and int8 against fp32 on the new images."""

    val_top1: float
    new_top1: float
    p_value: float  # Fisher's exact test, new vs val
    per_class: Dict[str, ClassAccuracy]
    int8: Optional[PairedDrop] = None


class ImageRow(Result):
    path: str
    score: float  # Mahalanobis
    outside: float  # mean share of quantized tensors' values outside range
    label: Optional[str] = None
    predicted: str


class ShiftResult(Result):
    data: str
    labelled: bool
    images: int
    val_images: int
    train_images: int
    features: FeatureShift
    coverage: Optional[Coverage]
    accuracy: Optional[Accuracy]
    least_like_training: List[ImageRow]
    most_saturating: List[ImageRow]
    verdicts: List[str]
    json_path: str
    png_path: str


def new_images(data: str | os.PathLike, classes: list[str]) -> tuple[ImageList, bool]:
    """The new images, labelled when every sub-folder is one of the model's classes (the ImageFolder layout),
    otherwise every image file under `data`, unlabelled (label -1)."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: {'is a file, not' if root.exists() else 'no such'} folder",
                        "give a folder of images, or an ImageFolder DIR/<class>/* of the model's classes")
    folders = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    loose = [f for f in root.iterdir() if f.is_file() and is_image_file(f.name)]
    if folders and not loose and set(folders) <= set(classes):
        return scan_folder(root, classes=classes), True
    paths = image_files(root)
    if not paths:
        raise DataError(f"{root}: holds no images", "give a folder of images (.jpg, .png, ...)")
    return ImageList(list(classes), paths, [-1] * len(paths)), False


def _graphs(run: RunDir, events: Events) -> Graphs:
    """model.onnx, and the int8 graph coverage is read against: the TensorRT form, else the CPU form (checked:
    its form, readable, the bytes quantize recorded), with the ranges it quantizes."""
    import onnx

    fp32 = onnx.load(str(run.onnx))
    graphs = Graphs(fp32_path=run.onnx, fp32=fp32, feature=feature_tensor(fp32))
    form = next((f for f in (S8S8, U8S8) if (run.path / f.file).is_file()), None)
    if form is None:
        events.message(f"no int8 graph in {run.path}: int8 coverage not checked (`edgetl quantize {run.path}`)")
        return graphs
    path = run.path / form.file
    why = graph_mismatch(path, INT8, form.target)
    if why:
        raise FormMismatch(f"{path.name}: {why}", f"re-run `edgetl quantize {run.path}`")
    ModelCard.from_onnx(path)
    entry = int8_entry(run, form)
    if entry is not None and entry.qat is not None and entry.qat.kept:
        events.warning(f"{path.name} comes from quantization-aware training: its ranges are checked "
                       f"against {run.onnx.name}'s activations, close to but not those of the QAT weights")
    graphs.int8_form, graphs.exact_int8 = form, SCORING_OF_FORM[form.name] == "exact"
    graphs.ranges = int8_ranges(onnx.load(str(path)), fp32)
    return graphs


def shift(run_path: str | os.PathLike, cfg: ShiftSettings, events: Events = SILENT) -> ShiftResult:
    """Check `cfg.data` against the run's training side; write RUN/shift.json and RUN/shift.png and record `cfg`
    in RUN/settings/shift.yaml."""
    run = RunDir(run_path)
    run.require(run.onnx, hint="run `edgetl export` first")
    card = ModelCard.from_onnx(run.onnx)
    items, labelled = new_images(cfg.data, list(card.class_names))
    if not labelled:
        events.message(f"{cfg.data}: read as unlabelled (labelled means DIR/<class>/* with the model's classes: "
                       f"{', '.join(card.class_names[:10])}{', ...' if card.num_classes > 10 else ''})")
    graphs = _graphs(run, events)
    ref = reference(run, card, graphs, cfg, events)
    events.status(f"checking {len(items)} images of {cfg.data}")
    new = run_pass(graphs, card, items, batch_size=cfg.batch_size, threads=cfg.threads,
                   progress=lambda d, t: events.progress("new images", d, t))
    scores = mahalanobis(new.features, ref.gaussian)
    features = _feature_shift(new, scores, ref, cfg)
    coverage = _coverage(run, graphs, new, ref, cfg, labelled) if graphs.int8_form is not None else None
    accuracy = _accuracy(new, ref, list(card.class_names)) if labelled else None
    result = ShiftResult(
        data=str(cfg.data), labelled=labelled, images=len(items), val_images=len(ref.val.labels),
        train_images=ref.train_images, features=features, coverage=coverage, accuracy=accuracy,
        least_like_training=_rows(items, new, scores, np.argsort(-scores)[:cfg.top], card),
        most_saturating=_rows(items, new, scores, _saturating(new, cfg.top), card),
        verdicts=_verdicts(features, coverage, accuracy, cfg.alpha), json_path=str(run.shift_json),
        png_path=str(run.shift_png))
    from edgetl.plots import plot_shift

    plot_shift(result, scores, ref.val_scores, run.shift_png)
    result.write(run.shift_json)
    record_settings(run.path, "shift", cfg)
    return result


def _feature_shift(new: Pass, scores: np.ndarray, ref: Reference, cfg: ShiftSettings) -> FeatureShift:
    threshold = float(np.percentile(ref.val_scores, cfg.quantile))
    above, above_p = above_share(scores, ref.val_scores, threshold)
    a = new.features[spread(len(scores), cfg.max_images, cfg.seed)]
    b = ref.val.features[spread(len(ref.val_scores), cfg.max_images, cfg.seed + 1)]
    mmd2 = mmd_p = None
    if min(len(a), len(b)) >= MMD_MIN_IMAGES:
        mmd2, mmd_p = mmd_test(a, b, ref.gaussian, cfg.permutations, cfg.seed)
    shifted = (mmd_p if mmd_p is not None else above_p) < cfg.alpha  # a set too small for MMD: the rank test
    return FeatureShift(quantile=cfg.quantile, threshold=threshold, above=above, above_expected=1 - cfg.quantile / 100,
                        above_p=above_p, median_score=float(np.median(scores)),
                        val_median_score=float(np.median(ref.val_scores)), mmd2=mmd2, mmd_p=mmd_p,
                        mmd_images=[len(a), len(b)], shifted=shifted, verdict=SHIFTED if shifted else LOOKS_LIKE)


def _agreement(p: Pass) -> float:
    return top1_agreement(p.int8_logits, p.logits)


def _coverage(run: RunDir, graphs: Graphs, new: Pass, ref: Reference, cfg: ShiftSettings,
              labelled: bool) -> Coverage:
    ranges = graphs.ranges
    new_share, val_share = tensor_outside(new.outside), tensor_outside(ref.val.outside)
    # measured against what the calibration images themselves overflow when they can be rebuilt, else val's
    base = tensor_outside(ref.calib_outside) if ref.calib_outside is not None else val_share
    bad = uncovered(new_share, base, cfg.coverage_limit)
    val_bad = uncovered(val_share, base, cfg.coverage_limit) if ref.calib_outside is not None else bad & False
    order = np.lexsort((-val_share, -new_share))  # worst first
    tensors = [TensorCoverage(tensor=ranges[j].tensor, new=float(new_share[j]), val=float(val_share[j]),
                              calibration=float(base[j]) if ref.calib_outside is not None else None,
                              covered=not bad[j]) for j in order]
    command = None
    if bad.any():
        layout = "" if labelled else " (calibration reads DIR/<class>/*: put them in any of the model's class folders)"
        command = f"edgetl quantize {run.path} --calib {cfg.data}{layout}"
    verdict = NOT_COVERED if bad.any() else COVERED
    if val_bad.any():
        verdict += f"; the val split overflows {int(val_bad.sum())} range(s) too: the calibration images are narrower than the data"
    return Coverage(model_file=graphs.int8_form.file, reference="calibration images" if ref.calib_outside is not None
                    else "val split", tensors=tensors, uncovered=int(bad.sum()), val_uncovered=int(val_bad.sum()),
                    int8_agreement=_agreement(new), val_int8_agreement=_agreement(ref.val), verdict=verdict,
                    command=command)


def _accuracy(new: Pass, ref: Reference, classes: list[str]) -> Accuracy:
    new_right = new.logits.argmax(1) == new.labels
    val_right = ref.val.logits.argmax(1) == ref.val.labels
    per_class = {}
    for i, name in enumerate(classes):
        mask, vmask = new.labels == i, ref.val.labels == i
        if mask.any():
            per_class[name] = ClassAccuracy(n=int(mask.sum()), new=float(new_right[mask].mean()),
                                            val=float(val_right[vmask].mean()) if vmask.any() else None)
    int8 = paired_drop(new.logits, new.int8_logits, new.labels, classes) if new.int8_logits is not None else None
    return Accuracy(val_top1=float(val_right.mean()), new_top1=float(new_right.mean()),
                    p_value=accuracy_difference(new_right, val_right), per_class=per_class, int8=int8)


def _saturating(new: Pass, top: int) -> np.ndarray:
    """The `top` images with the largest share of values outside the int8 ranges (only those with any)."""
    share = new.outside.mean(1) if new.outside.shape[1] else np.zeros(len(new.labels))
    order = np.argsort(-share, kind="stable")[:top]
    return order[share[order] > 0]


def _rows(items: ImageList, new: Pass, scores: np.ndarray, order: np.ndarray, card: ModelCard) -> list[ImageRow]:
    classes = list(card.class_names)
    outside = new.outside.mean(1) if new.outside.shape[1] else np.zeros(len(scores))
    return [ImageRow(path=items.paths[i], score=float(scores[i]), outside=float(outside[i]),
                     label=classes[items.labels[i]] if items.labels[i] >= 0 else None,
                     predicted=classes[int(new.logits[i].argmax())]) for i in order]


def _verdicts(features: FeatureShift, coverage: Coverage | None, accuracy: Accuracy | None,
              alpha: float) -> list[str]:
    said = [features.verdict]
    if coverage is not None:
        said.append(coverage.verdict)
    if accuracy is not None and accuracy.p_value < alpha and accuracy.new_top1 < accuracy.val_top1:
        said.append(f"accuracy is lower than val's ({accuracy.new_top1 * 100:.1f}% vs {accuracy.val_top1 * 100:.1f}%)")
    return said
