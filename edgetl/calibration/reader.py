"""Feeding calibration images to ONNX Runtime's calibrators with the card's eval preprocessing."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgetl.card import ModelCard
from edgetl.data import ImageList, iter_batches
from edgetl.stage import SILENT, Events


class ImageCalibrationReader:
    """An onnxruntime.quantization.CalibrationDataReader (it recognises any object with get_next()).

    Batches come from edgetl.data.iter_batches, i.e. the card's eval pipeline in the graph's input
    format (float32 NCHW or uint8 NHWC) -- never the training augmentation. With a fixed graph batch,
    the last partial batch is dropped (the graph cannot take it). `chunk` makes get_next() report the
    end after that many batches so the caller can hand the calibrator bounded pieces (memory);
    `batches_read` counts every batch given out (tests use it to prove a cache hit ran nothing). Images read
    so far are reported as the `events` progress task `task`.

    Every batch of one chunk has the same size (unchunked reading gives every batch in turn): ONNX Runtime's histogram calibrators (entropy, percentile)
    stack a chunk's outputs with np.asarray, which fails on a ragged list ("inhomogeneous shape"), so a last
    partial batch ends the chunk it would have joined and starts the next one on its own.
    """

    def __init__(self, items: ImageList, card: ModelCard, input_name: str, batch_size: int,
                 drop_last: bool = False, events: Events = SILENT, task: str = "calibrating"):
        self.items, self.card, self.input_name = items, card, input_name
        self.batch_size, self.drop_last, self.events, self.task = batch_size, drop_last, events, task
        self.batches_read = 0
        self.images_read = 0
        self._it: Iterator | None = None
        self._left_in_chunk: int | None = None
        self._chunk_batch: int | None = None  # the size of this chunk's batches
        self._held: np.ndarray | None = None  # a batch of another size, kept for the next chunk
        self.exhausted = False

    @property
    def images_used(self) -> int:
        n = len(self.items)
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        return -(-self.images_used // self.batch_size)

    def start_chunk(self, batches: int | None) -> None:
        self._left_in_chunk = batches
        self._chunk_batch = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left_in_chunk is not None and self._left_in_chunk <= 0:
            return None
        if self._held is not None:
            batch, self._held = self._held, None
        else:
            if self._it is None:
                self._it = iter_batches(self.items.subset(range(self.images_used)), self.card, self.batch_size)
            x = next(self._it, None)
            if x is None:
                self.exhausted = True
                return None
            batch = x[0]
        if self._left_in_chunk is not None and self._chunk_batch not in (None, len(batch)):
            self._held = batch  # ragged: this chunk ends here, the batch opens the next one
            return None
        self._chunk_batch = len(batch)
        if self._left_in_chunk is not None:
            self._left_in_chunk -= 1
        self.batches_read += 1
        self.images_read += len(batch)
        self.events.progress(self.task, self.images_read, self.images_used)
        return {self.input_name: batch}
