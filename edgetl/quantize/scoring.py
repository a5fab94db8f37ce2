"""Scoring a graph against the fp32 model on the same images: ONNX Runtime on the CPU, through the runtime's
Backend (which takes the graph's bytes, and pads a fixed batch)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import ModelError, QuantizeError
from edgetl.metrics import top1 as top1_of
from edgetl.quantize.graph import FloatModel
from edgetl.rundir import RunDir
from edgetl.stage import Events

DYNAMIC_BATCH = 64  # scoring batch of a graph with a dynamic batch (a fixed-batch graph uses its own)


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

    def logits(self, model: str | os.PathLike | bytes) -> np.ndarray:
        """Logits of `model` (a path or serialized ModelProto) on `x`; CannotRun if ONNX Runtime refuses it."""
        from edgetl.runtime import create_backend

        backend = create_backend("onnxruntime", model if isinstance(model, bytes) else str(model), device="cpu",
                                 card=self.card, threads=self.threads)
        try:
            with backend:
                return backend.logits(self.x, DYNAMIC_BATCH)
        except ModelError as e:  # cannot load or run it; a wrong input is a bug and stays an EdgetlError
            raise CannotRun(e.message) from None

    def score(self, proto) -> tuple[float, np.ndarray]:
        """(top-1, logits) of a quantized ModelProto; QuantizeError if ONNX Runtime cannot run it."""
        try:
            logits = self.logits(proto.SerializeToString())
        except CannotRun as e:
            raise QuantizeError(f"onnxruntime cannot run the quantized graph ({e})") from None
        return top1_of(logits, self.y), logits

    def top1(self, logits: np.ndarray) -> float:
        return top1_of(logits, self.y)

    def agreement(self, logits: np.ndarray) -> float:
        """Share of images whose top-1 class is the fp32 model's."""
        return float((logits.argmax(1) == self.fp32_logits.argmax(1)).mean())


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
