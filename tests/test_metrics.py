"""Metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.metrics import classification_metrics, paired_drop


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


def test_mcnemar_exact_by_hand():
    """20 images, both classes of 10. fp32 misses two of class b that the other model gets; the other model
    misses eight of class a. Discordant 8 vs 2: p = 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024."""
    labels = np.array([0] * 10 + [1] * 10)
    reference = np.eye(2)[labels]
    reference[[10, 11]] = [1, 0]
    model = np.eye(2)[labels]
    model[:8] = [0, 1]
    d = paired_drop(reference, model, labels, ["a", "b"])
    assert (d.n, d.only_reference_right, d.only_model_right) == (20, 8, 2)
    assert d.p_value == pytest.approx(112 / 1024) and not d.significant  # 30 points down, yet p = 0.11
    assert d.per_class["a"].model == pytest.approx(0.2) and d.per_class["b"].reference == pytest.approx(0.8)
    assert d.per_class["a"].n == d.per_class["b"].n == 10


def test_mcnemar_same_predictions_and_a_clear_drop():
    labels = np.arange(40) % 4
    logits = np.eye(4)[labels]
    same = paired_drop(logits, logits, labels, list("abcd"))
    assert same.p_value == 1.0 and not same.significant and same.only_reference_right == 0
    worse = np.eye(4)[(labels + 1) % 4]  # wrong everywhere: 40 discordant images, all one way
    clear = paired_drop(logits, worse, labels, list("abcd"))
    assert clear.p_value == pytest.approx(2 * 0.5 ** 40) and clear.significant
