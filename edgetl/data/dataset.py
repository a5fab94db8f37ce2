"""Feeding images: a torch Dataset for training, numpy batches for every backend."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgetl.card import ModelCard
from edgetl.data.folder import ImageList
from edgetl.data.images import load_rgb
from edgetl.data.skipped import BadImage
from edgetl.data.transforms import eval_geometry, eval_transform, to_chw
from edgetl.errors import DataError


class ImageDataset:
    """torch-style Dataset: (float32 CHW tensor, label). Written without subclassing torch so that
    the device side (numpy only) can import this module.

    With `skip_bad`, an image that cannot be read gives a BadImage marker instead of raising (in a loader worker,
    an exception would end the epoch); edgetl.data.loader's collate drops it and reports it."""

    def __init__(self, items: ImageList, transform, skip_bad: bool = False):
        self.items = items
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        path = self.items.paths[i]
        try:
            rgb = load_rgb(path)
        except DataError as e:
            if not self.skip_bad:
                raise
            prefix = f"{path}: "
            return BadImage(path, e.message[len(prefix):] if e.message.startswith(prefix) else e.message)
        image = self.transform(image=rgb)["image"]
        x = torch.from_numpy(to_chw(image))
        return x, self.items.labels[i]

    def check_output_size(self, card: ModelCard) -> None:
        first = next((s for s in (self[i] for i in range(len(self))) if not isinstance(s, BadImage)), None)
        if first is None:
            raise DataError("no readable image to train on")
        x, _ = first
        if tuple(x.shape) != tuple(card.input_size):
            raise DataError(f"the augmentation pipeline yields {tuple(x.shape)}, the model needs {tuple(card.input_size)}",
                            "end a custom pipeline with a resize or crop to the model's size")


def preprocess(image_rgb: np.ndarray, card: ModelCard) -> np.ndarray:
    """One HWC uint8 RGB image -> the graph's input layout (float32 CHW, or uint8 HWC when fused)."""
    if card.input_format == "uint8_nhwc":
        return np.ascontiguousarray(eval_geometry(card)(image=image_rgb)["image"], dtype=np.uint8)
    return to_chw(eval_transform(card)(image=image_rgb)["image"].astype(np.float32))


def iter_batches(items: ImageList, card: ModelCard, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, labels) batches in the card's input format, in file order."""
    for start in range(0, len(items), batch_size):
        paths = items.paths[start:start + batch_size]
        x = np.stack([preprocess(load_rgb(p), card) for p in paths])
        y = np.asarray(items.labels[start:start + batch_size], dtype=np.int64)
        yield x, y


def load_arrays(items: ImageList, card: ModelCard, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole (or first `limit`) list as two arrays; for small evaluation and calibration sets."""
    if limit is not None:
        items = items.subset(range(min(limit, len(items))))
    if len(items) == 0:
        raise DataError("no images to load")
    xs, ys = zip(*iter_batches(items, card, 64))
    return np.concatenate(xs), np.concatenate(ys)
