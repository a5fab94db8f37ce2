"""Classification metrics from logits and labels (scikit-learn does the arithmetic)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from edgetl.stage import Result


class Metrics(Result):
    """What `classification_metrics` returns, as a model: the keys `edgetl eval --json` and metrics.json carry."""

    n: int
    top1: float
    top5: float | None
    macro_f1: float
    auc_roc: float | None
    per_class_accuracy: dict[str, float | None]
    classes: list[str]
    confusion: list[list[int]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(labels)).mean())


def top1_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Share of images whose top-1 class is the same under both models."""
    return float((np.asarray(logits).argmax(1) == np.asarray(reference_logits).argmax(1)).mean())


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """top1, top5 (5+ classes), macro_f1, auc_roc (one-vs-rest macro), per-class accuracy, confusion."""
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, top_k_accuracy_score

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(classes)
    all_labels = np.arange(n)
    pred = logits.argmax(axis=1)
    probs = softmax(logits)
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "top1": top1(logits, labels),
        "top5": _top5(labels, logits, all_labels, top_k_accuracy_score) if n >= 5 else None,
        "macro_f1": float(f1_score(labels, pred, labels=all_labels, average="macro", zero_division=0)),
        "auc_roc": _auc(labels, probs, n, roc_auc_score),
    }
    cm = confusion_matrix(labels, pred, labels=all_labels)
    support = cm.sum(axis=1)
    out["per_class_accuracy"] = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    out["classes"] = list(classes)
    out["confusion"] = cm.tolist()
    return out


def _top5(labels, logits, all_labels, top_k_accuracy_score) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with exactly 5 classes top-5 is 1.0 by construction; sklearn warns
        return float(top_k_accuracy_score(labels, logits, k=5, labels=all_labels))


def _auc(labels: np.ndarray, probs: np.ndarray, n: int, roc_auc_score) -> float | None:
    present = np.unique(labels)
    if len(present) < 2:
        return None  # undefined with a single class in the data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        # Classes absent from this data cannot have a ROC curve: average over the present ones.
        scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    value = float(np.mean(scores))
    return None if math.isnan(value) else value


SIGNIFICANCE = 0.05  # a drop with a larger p-value is "not distinguishable from 0" on these images


class ClassChange(Result):
    """One class's top-1 under the reference model and under the model compared with it."""

    n: int
    reference: float
    model: float


class PairedDrop(Result):
    """A model against its reference (fp32) on the same images, image by image: whether a drop in top-1 is
    more than the luck of which images were scored (exact McNemar test), and where it lands per class."""

    n: int
    only_reference_right: int  # images the reference classifies right and the model wrong
    only_model_right: int
    p_value: float  # two-sided exact McNemar: a binomial test on the images the two models disagree on
    significant: bool  # p_value < SIGNIFICANCE
    per_class: dict[str, ClassChange]


def paired_drop(reference_logits: np.ndarray, model_logits: np.ndarray, labels: np.ndarray,
                classes: list[str]) -> PairedDrop:
    """McNemar's exact test on the discordant images, and per-class top-1 of both."""

    labels = np.asarray(labels)
    ref_right = np.asarray(reference_logits).argmax(1) == labels
    model_right = np.asarray(model_logits).argmax(1) == labels
    b, c, p = mcnemar(ref_right, model_right)
    per_class = {name: ClassChange(n=int(mask.sum()), reference=float(ref_right[mask].mean()),
                                   model=float(model_right[mask].mean()))
                 for i, name in enumerate(classes) if (mask := labels == i).any()}
    return PairedDrop(n=int(len(labels)), only_reference_right=b, only_model_right=c, p_value=p,
                      significant=p < SIGNIFICANCE, per_class=per_class)


def drop_verdict(significant: bool, only_reference_right: int, only_model_right: int) -> str:
    """A paired comparison in words: a real drop, a real gain, or neither on these images."""
    if not significant:
        return "not distinguishable from 0"
    return "a real drop" if only_reference_right > only_model_right else "a real gain"


def mcnemar(reference_right: np.ndarray, model_right: np.ndarray) -> tuple[int, int, float]:
    """(images only the reference got right, images only the model got right, two-sided exact McNemar p-value:
    scipy's binomial test on the images the two disagree on)."""
    from scipy.stats import binomtest

    ref, model = np.asarray(reference_right, bool), np.asarray(model_right, bool)
    b, c = int((ref & ~model).sum()), int((~ref & model).sum())
    return b, c, float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
