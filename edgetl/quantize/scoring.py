"""Scoring a graph against the fp32 model on the same images: ONNX Runtime on the CPU, through the runtime's
Backend (which takes the graph's bytes, and pads a fixed batch).

Two ways to run an int8 Q/DQ graph, and each form is scored the way its target computes it:

  exact  graph optimizations off (ORT_DISABLE_ALL): every DequantizeLinear runs, then the float op -- the
         arithmetic the graph defines, which TensorRT reproduces with int32 accumulation. The TensorRT form.
  fused  ONNX Runtime's default: Q/DQ fused into int8 CPU kernels (QLinearConv, ...). What runs on a CPU,
         but its result depends on the instruction set: on x86 without VNNI the U8S8 path (vpmaddubsw) adds
         pairs of products into saturating int16, which loses accuracy (hardest on S8S8 graphs). The CPU form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import ModelError, QuantizeError
from edgetl.metrics import PairedDrop, paired_drop, top1 as top1_of, top1_agreement
from edgetl.portable.forms import S8S8, U8S8
from edgetl.quantize.graph import FloatModel
from edgetl.rundir import RunDir
from edgetl.stage import Events

DYNAMIC_BATCH = 64  # scoring batch of a graph with a dynamic batch (a fixed-batch graph uses its own)
SCORING_OF_FORM = {S8S8.name: "exact", U8S8.name: "fused"}  # how each int8 form's own target computes it
SCORING_HOW = {"exact": "exact Q/DQ arithmetic (onnxruntime, graph optimizations off)",
               "fused": "onnxruntime's fused int8 CPU kernels on {isa}"}




class CannotRun(Exception):
    """ONNX Runtime on this machine cannot load or run the graph."""


@dataclass
class Scorer:
    """The scoring images (`x`, labels `y`) and the fp32 model's logits on them."""

    x: np.ndarray
    y: np.ndarray
    source: str  # where the images came from, for the report
    card: ModelCard  # given to the backend: the graphs scored here are not yet in the run's records
    threads: int | None
    fp32_logits: np.ndarray | None = None
    fp32_top1: float = 0.0

    def logits(self, model: str | os.PathLike | bytes, exact: bool = False) -> np.ndarray:
        """Logits of `model` (a path or serialized ModelProto) on `x`, `exact` or through the fused kernels;
        CannotRun if ONNX Runtime refuses it."""
        from edgetl.runtime import create_backend

        backend = create_backend("onnxruntime", model if isinstance(model, bytes) else str(model), device="cpu",
                                 card=self.card, threads=self.threads, exact=exact)
        try:
            with backend:
                return backend.logits(self.x, DYNAMIC_BATCH)
        except ModelError as e:  # cannot load or run it; a wrong input is a bug and stays an EdgetlError
            raise CannotRun(e.message) from None

    def score(self, proto, scoring: str = "exact") -> tuple[float, np.ndarray]:
        """(top-1, logits) of a quantized ModelProto, run `scoring` ("exact" or "fused"); QuantizeError if ONNX
        Runtime cannot run it."""
        try:
            logits = self.logits(proto.SerializeToString(), exact=scoring == "exact")
        except CannotRun as e:
            raise QuantizeError(f"onnxruntime cannot run the quantized graph ({e})") from None
        return top1_of(logits, self.y), logits

    def top1(self, logits: np.ndarray) -> float:
        return top1_of(logits, self.y)

    def drop(self, top1: float) -> float:
        """Points of top-1 below fp32, rounded to 1e-6: top-1s are multiples of 1/n, and 0.84 - 0.83 in floats is
        1.0000000000000009 points, which a 1-point budget would call over."""
        return round((self.fp32_top1 - top1) * 100, 6)

    def agreement(self, logits: np.ndarray) -> float:
        """Share of images whose top-1 class is the fp32 model's."""
        return top1_agreement(logits, self.fp32_logits)

    def paired(self, logits: np.ndarray) -> PairedDrop:
        """The drop from fp32 image by image: its significance (McNemar) and per class."""
        return paired_drop(self.fp32_logits, logits, self.y, list(self.card.class_names))

    def subset(self, n: int, seed: int = 0) -> "Scorer":
        """The same scorer on a fixed, seeded choice of at most `n` of its images (the sensitivity search
        ranks layers there; decisions are confirmed on all images)."""
        if len(self.y) <= n:
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.y), n, replace=False))
        sub = replace(self, x=self.x[idx], y=self.y[idx], source=f"{n} of {self.source}",
                      fp32_logits=self.fp32_logits[idx])
        sub.fp32_top1 = sub.top1(sub.fp32_logits)
        return sub


def make_scorer(run: RunDir, card: ModelCard, source: FloatModel, data: str | None, threads: int | None,
                events: Events) -> Scorer:
    """The scoring images (`data`, else the run's val split), with the fp32 model scored on them."""
    from edgetl.data import load_arrays, read_splits, scan_folder

    if data is None:
        run.require(run.splits, hint="set data to an ImageFolder to score on")
        _, items = read_splits(run.splits)
        where = "run val split"
    else:
        items = scan_folder(data, classes=card.class_names)
        where = str(data)
    events.message(f"scoring on {len(items)} images ({where})")
    x, y = load_arrays(items, card)
    scorer = Scorer(x=x, y=y, source=where, card=card, threads=threads)
    try:
        scorer.fp32_logits = scorer.logits(source.path)
    except CannotRun as e:
        raise QuantizeError(f"onnxruntime cannot run the fp32 model ({e})", "re-run `edgetl export`") from None
    scorer.fp32_top1 = scorer.top1(scorer.fp32_logits)
    events.message(f"fp32 top-1 {scorer.fp32_top1 * 100:.2f}%")
    return scorer
