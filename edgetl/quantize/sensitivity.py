"""The exclusion search: which quantized layers to keep in float when int8 loses more than max_drop.

Leave-one-out sensitivity: for each quantized compute node (convs, GEMMs, MatMuls, and also residual Adds, pools
and the cpu form's other quantized ops), the top-1 of the model with every node quantized except that one. It
costs one scoring per layer (the quantized graph is edited, graph.float_node, rather than quantized anew) and
measures what matters here: what keeping that layer in float buys with the others quantized. Layers are then
kept in float greedily, most sensitive first, each kept only if it raised top-1 (now through the quantizer's own
graph), until the drop is within budget or no candidate helps.

Bounded, so that a real backbone (EfficientNet-Lite0: ~60 candidates) takes minutes: layers are ranked on a
fixed, seeded subset of the scoring images (SENSITIVITY_IMAGES) by how close the model's logits come to fp32's
with that layer in float (mean KL divergence of the softmaxes: continuous, so a small subset ranks finely where
top-1 on 128 images moves in steps of 0.8 points), the scan stops at the first layer whose
exclusion alone meets the budget (confirmed on every image), it says how long it expects to take, and the
greedy step gives up after PATIENCE layers in a row that do not help. Every
decision that is written (a layer kept in float, the final top-1) is scored on all the images, the form's
own way (exact for the TensorRT form, fused for the cpu form).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.quantize.graph import DATA_MOVEMENT_OPS, float_node, qdq, quantized_nodes
from edgetl.quantize.report import Excluded, Sensitivity
from edgetl.quantize.scoring import Scorer
from edgetl.stage import Events

SENSITIVITY_IMAGES = 128  # images the layers are ranked on (fixed, seeded); all when the set is smaller
# Layers tried in a row, most sensitive first, that do not raise top-1 before the greedy search gives up: each try
# costs a full scoring, and past the first few the ranking's tail rarely holds a layer that helps.
PATIENCE = 4


def _kl_to_fp32(scorer: Scorer, logits: np.ndarray) -> float:
    """Mean KL(fp32 softmax || model softmax) over the scorer's images."""
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    p, q = log_softmax(scorer.fp32_logits.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(1).mean())


@dataclass
class Quantized:
    """A Q/DQ graph and how it scored."""

    proto: Any
    top1: float
    logits: np.ndarray
    excluded: list[Excluded] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    sensitivity_images: int | None = None


def sensitivity(base, calib, target: str, best: Quantized, scorer: Scorer, events: Events, scoring: str = "exact",
                max_drop: float | None = None,
                weights: str | None = None) -> tuple[list[Sensitivity], Quantized | None, float]:
    """Every quantized compute node of `best` with the top-1 (on `scorer.subset`) reached when only it stays
    float, most sensitive first; when one node's exclusion alone meets `max_drop` on all images, that model
    (the scan stopped there); and `best`'s own KL to fp32 on the subset, the ranking's reference."""
    sub = scorer.subset(SENSITIVITY_IMAGES)
    quantized = quantized_nodes(best.proto)
    layers = [n.name for n in base.graph.node if n.op_type not in DATA_MOVEMENT_OPS and n.name in quantized]
    ref, ref_logits = (best.top1, best.logits) if sub is scorer else sub.score(best.proto, scoring)
    found: list[Sensitivity] = []
    done = None
    start = time.perf_counter()
    for i, name in enumerate(layers):
        events.progress(f"layer sensitivity ({len(sub.y)} images, {scoring})", i, len(layers))
        t1, lg = sub.score(float_node(best.proto, base, name), scoring)
        found.append(Sensitivity(node=name, top1_if_float=t1, gain=(t1 - ref) * 100, kl_if_float=_kl_to_fp32(sub, lg)))
        if i == 1:
            each = (time.perf_counter() - start) / 2
            events.message(f"  measuring {len(layers)} layers on {len(sub.y)} images, {each:.1f} s each: "
                           f"at most {each * len(layers) / 60:.1f} min")
        if max_drop is not None and sub.drop(t1) <= max_drop and t1 > ref:
            trial = qdq(base, calib, target, exclude=[name], weights=weights)  # the quantizer's own graph is written
            full_t1, full_logits = scorer.score(trial, scoring)
            if scorer.drop(full_t1) <= max_drop and full_t1 > best.top1:
                done = Quantized(trial, full_t1, full_logits, excluded=[Excluded(
                    node=name, gain=(full_t1 - best.top1) * 100, top1_after=full_t1,
                    drop_after=scorer.drop(full_t1))])
                events.message(f"  stopped after {i + 1} of {len(layers)} layers: keeping {name} in float meets "
                               f"max_drop")
                break
    events.progress(f"layer sensitivity ({len(sub.y)} images, {scoring})", len(layers), len(layers))
    found.sort(key=lambda s: s.kl_if_float)
    return found, done, _kl_to_fp32(sub, ref_logits)


def exclude_sensitive(base, calib, target: str, best: Quantized, scorer: Scorer, max_drop: float,
                      events: Events, scoring: str = "exact", weights: str | None = None) -> Quantized:
    """`best` with the layers kept in float that bring its drop within `max_drop` (as far as any helps)."""
    ranked, done, ref_kl = sensitivity(base, calib, target, best, scorer, events, scoring, max_drop, weights)
    images = min(len(scorer.y), SENSITIVITY_IMAGES)
    if done is not None:
        done.sensitivity, done.sensitivity_images = ranked, images
        events.message(f"  kept {done.excluded[0].node} in float: top-1 {best.top1 * 100:.2f}% -> "
                       f"{done.top1 * 100:.2f}%")
        return done
    current = Quantized(best.proto, best.top1, best.logits, sensitivity=ranked, sensitivity_images=images)
    misses = 0
    for cand in ranked:
        if scorer.drop(current.top1) <= max_drop or cand.kl_if_float >= ref_kl:
            break  # within budget, or no layer left whose float version moves the logits towards fp32
        if misses == PATIENCE:
            events.message(f"  stopped: the next {PATIENCE} most sensitive layers did not raise top-1")
            break
        names = [e.node for e in current.excluded] + [cand.node]
        trial = qdq(base, calib, target, exclude=names, weights=weights)
        t1, lg = scorer.score(trial, scoring)
        misses = 0 if t1 > current.top1 else misses + 1
        if t1 > current.top1:
            current.excluded.append(Excluded(node=cand.node, gain=(t1 - current.top1) * 100, top1_after=t1,
                                             drop_after=scorer.drop(t1)))
            events.message(f"  kept {cand.node} in float: top-1 {current.top1 * 100:.2f}% -> {t1 * 100:.2f}%")
            current.proto, current.top1, current.logits = trial, t1, lg
    if scorer.drop(current.top1) > max_drop:
        events.message(f"  drop still {scorer.drop(current.top1):.2f} pt after keeping "
                       f"{len(current.excluded)} layer(s) in float")
    return current
