"""Which images calibrate: a stratified, seeded subset of a folder (or of the run's train split)."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from edgetl.card import ModelCard
from edgetl.data import ImageList, read_splits, scan_folder
from edgetl.errors import DataError
from edgetl.io import sha256_file
from edgetl.rundir import RunDir

# NVIDIA's guidance for post-training INT8 calibration of CNNs (TensorRT developer guide, ModelOpt): about 500
# images. 512 by default (all when the data has fewer), and a one-line warning below MIN_CALIB_IMAGES.
DEFAULT_CALIB_SIZE = 512
MIN_CALIB_IMAGES = 500


def stratified_sample(items: ImageList, size: int | None, seed: int = 0) -> ImageList:
    """Up to `size` images with every class in proportion to its share (largest remainder), each present
    class at least once when `size` allows; the same seed gives the same files. None or >= len: all."""
    if size is not None and size < 1:
        raise DataError(f"calib_size {size}: must be at least 1")
    if size is None or size >= len(items):
        return items
    labels = np.asarray(items.labels)
    present = [c for c in range(len(items.classes)) if (labels == c).any()]
    counts = np.array([(labels == c).sum() for c in present], dtype=np.float64)
    quota = counts / counts.sum() * size
    take = np.floor(quota).astype(int)
    if size >= len(present):
        take = np.maximum(take, 1)  # a class missing from calibration would leave its activations unseen
    # Hand out what is left by largest remainder, then trim (the minimum of 1 can overshoot).
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= size:
            break
        if take[i] < counts[i]:
            take[i] += 1
    while take.sum() > size:
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, n in zip(present, take):
        idx = np.flatnonzero(labels == c)
        chosen += rng.permutation(idx)[:n].tolist()
    return items.subset(sorted(chosen))


def calibration_items(run: RunDir, card: ModelCard, calib: str | os.PathLike | None,
                      size: int | None = DEFAULT_CALIB_SIZE, seed: int = 0) -> ImageList:
    """The calibration images: from `calib` (ImageFolder DIR/<class>/*, classes a subset of the model's)
    or, by default, the run's own train split; then a stratified sample of `size`."""
    if calib is None:
        run.require(run.splits, hint="set calib to an ImageFolder DIR/<class>/* of images like the training data")
        items, _ = read_splits(run.splits)
        if list(items.classes) != list(card.class_names):
            raise DataError(f"{run.splits}: train split classes {items.classes} differ from the model's "
                            f"{card.class_names}", "set calib to an ImageFolder of the model's classes")
    else:
        items = scan_folder(calib, classes=card.class_names)
    if len(items) == 0:
        raise DataError(f"{calib or run.splits}: no calibration images", "give a folder of DIR/<class>/<image>")
    return stratified_sample(items, size, seed)


def items_hash(items: ImageList) -> str:
    """sha256 over (label, file content hash) in list order: renaming or moving the folder keeps it,
    changing an image or the selection changes it."""
    h = hashlib.sha256()
    for path, label in zip(items.paths, items.labels):
        h.update(f"{label}:{sha256_file(path)}\n".encode())
    return h.hexdigest()
