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


def test_every_metric_by_hand_and_eval_agrees_with_training(trained_run):
    """Six classes, one image each, probabilities chosen so every figure is countable by hand:
    true 0 1 2 3 4 5, predicted (argmax) 0 1 3 3 0 5; image 4's true class has the lowest score (top-5 miss)."""
    p = np.array([[.50, .10, .10, .10, .15, .05],
                  [.05, .60, .10, .10, .05, .10],
                  [.10, .05, .30, .40, .10, .05],
                  [.05, .10, .35, .38, .06, .06],
                  [.40, .20, .15, .15, .02, .08],
                  [.10, .05, .10, .05, .10, .60]])
    logits = np.log(p) + np.arange(6)[:, None]  # a per-row shift changes no softmax
    m = classification_metrics(logits, np.arange(6), list("abcdef"))
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == pytest.approx(5 / 6)
    # F1 per class: a P=1/2 R=1 -> 2/3; b 1; c 0; d P=1/2 R=1 -> 2/3; e 0; f 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0 + 2 / 3 + 0 + 1) / 6)
    # one-vs-rest AUC = share of the 5 negatives scored below the one positive, per class:
    # a 5/5, b 5/5, c 4/5 (d's .35 > .30), d 4/5 (c's .40 > .38), e 0/5 (.02 is the lowest), f 5/5
    assert m["auc_roc"] == pytest.approx((1 + 1 + .8 + .8 + 0 + 1) / 6)
    assert m["confusion"] == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0],
                              [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]]
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0, "e": 0.0, "f": 1.0}

    # consistency, second: `edgetl eval` on a run scores its val split as training's final evaluation did
    import json

    from edgetl.evaluate.run import eval_run

    saved = json.loads((trained_run / "metrics.json").read_text())
    again = eval_run(trained_run).model_dump(mode="json")
    for key in ("top1", "top5", "macro_f1", "auc_roc", "confusion", "per_class_accuracy"):
        assert again[key] == saved[key], key
