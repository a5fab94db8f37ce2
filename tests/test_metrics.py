"""Metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.metrics import classification_metrics


def test_three_class_by_hand():
    # true:  0 0 1 1 2 2 ; predicted (argmax): 0 1 1 1 2 0
    logits = np.array([[3, 1, 0], [1, 2, 0], [0, 3, 1], [0, 2, 1], [0, 1, 4], [2, 1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] is None  # fewer than 5 classes
    # per class: a P=1/2 R=1/2 F1=1/2; b P=2/3 R=1 F1=0.8; c P=1 R=1/2 F1=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["classes"] == ["a", "b", "c"] and m["n"] == 6


def test_auc_perfect_and_reversed_binary():
    labels = np.array([0, 0, 1, 1])
    good = np.array([[2, 0], [1, 0], [0, 1], [0, 3]], dtype=np.float32)
    assert classification_metrics(good, labels, ["n", "p"])["auc_roc"] == pytest.approx(1.0)
    assert classification_metrics(-good, labels, ["n", "p"])["auc_roc"] == pytest.approx(0.0)


def test_auc_one_vs_rest_macro_by_hand():
    # class 0 scores rank the positives perfectly; class 1 has one inversion out of 2x2 pairs (AUC .75).
    logits = np.log(np.array([[.8, .1, .1], [.1, .6, .3], [.2, .3, .5], [.1, .2, .7], [.7, .2, .1], [.1, .5, .4]]))
    labels = np.array([0, 1, 2, 2, 0, 1])
    auc = classification_metrics(logits, labels, ["a", "b", "c"])["auc_roc"]
    from sklearn.metrics import roc_auc_score

    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
    assert auc == pytest.approx(expected)
    assert 0.5 < auc <= 1.0


def test_top5_and_absent_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 7)).astype(np.float32)
    labels = np.arange(40) % 6  # class 6 never occurs in the data
    m = classification_metrics(logits, labels, [str(i) for i in range(7)])
    top5 = np.mean([l in np.argsort(-row)[:5] for row, l in zip(logits, labels)])
    assert m["top5"] == pytest.approx(top5)
    assert m["per_class_accuracy"]["6"] is None
    assert m["auc_roc"] is not None
