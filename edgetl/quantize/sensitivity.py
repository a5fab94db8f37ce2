"""The exclusion search: which quantized layers to keep in float when int8 loses more than max_drop.

Leave-one-out sensitivity: for each quantized compute node (convs, GEMMs, MatMuls, and also residual Adds, pools
and the cpu form's other quantized ops), the top-1 of the model with every node quantized except that one. It
costs one quantization and one scoring per layer (as much as one-layer-at-a-time) but measures what matters here:
what keeping that layer in float buys with the others quantized. Layers are then kept in float greedily, most
sensitive first, each kept only if it raised top-1, until the drop is within budget or no candidate helps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.quantize.graph import DATA_MOVEMENT_OPS, qdq, quantized_nodes
from edgetl.quantize.report import Excluded, Sensitivity
from edgetl.quantize.scoring import Scorer
from edgetl.stage import Events


@dataclass
class Quantized:
    """A Q/DQ graph and how it scored."""

    proto: Any
    top1: float
    logits: np.ndarray
    excluded: list[Excluded] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)


def sensitivity(base, calib, target: str, best: Quantized, scorer: Scorer, events: Events) -> list[Sensitivity]:
    """Every quantized compute node of `best`, with the top-1 reached when only it stays float; most sensitive
    first."""
    quantized = quantized_nodes(best.proto)
    layers = [n.name for n in base.graph.node if n.op_type not in DATA_MOVEMENT_OPS and n.name in quantized]
    found = []
    for i, name in enumerate(layers):
        events.progress("measuring layer sensitivity", i, len(layers))
        t1, _ = scorer.score(qdq(base, calib, target, exclude=[name]))
        found.append(Sensitivity(node=name, top1_if_float=t1, gain=(t1 - best.top1) * 100))
    events.progress("measuring layer sensitivity", len(layers), len(layers))
    found.sort(key=lambda s: -s.gain)
    return found


def exclude_sensitive(base, calib, target: str, best: Quantized, scorer: Scorer, max_drop: float,
                      events: Events) -> Quantized:
    """`best` with the layers kept in float that bring its drop within `max_drop` (as far as any helps)."""
    ranked = sensitivity(base, calib, target, best, scorer, events)
    current = Quantized(best.proto, best.top1, best.logits, sensitivity=ranked)
    for cand in ranked:
        if (scorer.fp32_top1 - current.top1) * 100 <= max_drop or cand.gain <= 0:
            break
        names = [e.node for e in current.excluded] + [cand.node]
        trial = qdq(base, calib, target, exclude=names)
        t1, lg = scorer.score(trial)
        if t1 > current.top1:
            current.excluded.append(Excluded(node=cand.node, gain=(t1 - current.top1) * 100, top1_after=t1,
                                             drop_after=(scorer.fp32_top1 - t1) * 100))
            events.message(f"  kept {cand.node} in float: top-1 {current.top1 * 100:.2f}% -> {t1 * 100:.2f}%")
            current.proto, current.top1, current.logits = trial, t1, lg
    if (scorer.fp32_top1 - current.top1) * 100 > max_drop:
        events.message(f"  drop still {(scorer.fp32_top1 - current.top1) * 100:.2f} pt after keeping "
                       f"{len(current.excluded)} layer(s) in float")
    return current
