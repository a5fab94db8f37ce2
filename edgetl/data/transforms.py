"""albumentations pipelines, built from the model card so training, calibration and eval agree."""

from __future__ import annotations

import os
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import DataError, first_line

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}

# Augmentation presets. "crop" has no flip: digits, text and other chiral classes change meaning.
PRESETS = ("none", "crop", "flip", "strong")


def resize_size(height: int, crop_pct: float) -> int:
    """timm's rule: resize the shorter side to size / crop_pct, then centre-crop `size`."""
    return int(np.floor(height / crop_pct))


def _interp(card: ModelCard) -> int:
    return INTERPOLATION.get(card.interpolation, cv2.INTER_LINEAR)


def eval_geometry(card: ModelCard) -> A.Compose:
    """Resize + centre crop to the network size; output stays uint8 HWC (what a fused graph takes)."""
    return A.Compose([A.SmallestMaxSize(max_size=card.resize, interpolation=_interp(card)),
                      A.CenterCrop(height=card.height, width=card.width)])


def normalize(card: ModelCard) -> A.Normalize:
    return A.Normalize(mean=card.mean, std=card.std, max_pixel_value=255.0)


def eval_transform(card: ModelCard) -> A.Compose:
    """uint8 HWC RGB -> float32 HWC, normalised. Channels-first is done by the batcher."""
    return A.Compose([*eval_geometry(card).transforms, normalize(card)])


def train_transform(card: ModelCard, augment: str | os.PathLike = "flip", seed: int | None = None) -> A.Compose:
    """A preset name from PRESETS, or a YAML file saved by `albumentations.save(..., data_format='yaml')`.

    A custom YAML holds only the augmentation; normalisation from the card is appended, and the
    pipeline must produce the card's H x W for any input size (checked here, before any training).
    """
    h, w = card.height, card.width
    interp = _interp(card)
    augment = str(augment)
    if augment == "none":
        steps = list(eval_geometry(card).transforms)
    elif augment in ("crop", "flip", "strong"):
        steps = [A.RandomResizedCrop(size=(h, w), scale=(0.5, 1.0), interpolation=interp)]
        if augment in ("flip", "strong"):
            steps.append(A.HorizontalFlip(p=0.5))
        if augment == "strong":
            steps += [A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
                      A.Affine(rotate=(-15, 15), p=0.5),
                      A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2),
                                      hole_width_range=(0.05, 0.2), p=0.5)]
    else:
        path = Path(augment)
        if not path.is_file():
            raise DataError(f"--augment {augment}: neither a preset ({', '.join(PRESETS)}) nor a YAML file")
        try:
            loaded = A.load(str(path), data_format="yaml")
        except Exception as e:
            raise DataError(f"{path}: not an albumentations YAML pipeline ({first_line(e)})") from None
        steps = list(loaded.transforms)
        _check_output_size(steps, card, path)
    return A.Compose([*steps, normalize(card)], seed=seed)


def _check_output_size(steps: list, card: ModelCard, where: Path, tries: int = 4) -> None:
    """A custom pipeline must give the card's H x W whatever the input size; checked now on synthetic
    images (larger and wider, larger and taller, smaller), a few draws each since steps may be random,
    rather than on the first real image, which would let a mixed-size data set crash mid-epoch."""
    h, w = card.height, card.width
    probe = A.Compose(list(steps), seed=0)  # the real pipeline is built (and seeded) afterwards
    sizes = [(2 * h + 17, 3 * w + 5), (3 * h + 5, 2 * w + 17), (max(1, h // 2 + 1), max(1, w // 3 + 1))]
    for ph, pw in sizes:
        image = np.random.default_rng(ph * 31 + pw).integers(0, 256, (ph, pw, 3), dtype=np.uint8)
        for _ in range(tries):
            try:
                out = probe(image=image)["image"]
            except Exception as e:  # albumentations raises ValueError and others for a crop larger than the image
                raise DataError(f"{where}: the augmentation pipeline fails on a {pw}x{ph} image ({first_line(e)})",
                                f"end it with a resize to the model's {w}x{h} (e.g. Resize or RandomResizedCrop)") from None
            shape = tuple(getattr(out, "shape", ()))
            if not isinstance(out, np.ndarray) or shape[:2] != (h, w) or len(shape) != 3 or shape[2] != 3:
                got = (f"{shape[1]}x{shape[0]}" if isinstance(out, np.ndarray) and len(shape) == 3 and shape[2] == 3
                       else f"a {type(out).__name__} of shape {shape}")
                raise DataError(f"{where}: the augmentation pipeline turns a {pw}x{ph} image into {got}, "
                                f"the model needs {w}x{h} (HxWx3 RGB)",
                                f"end it with a resize to {w}x{h} (e.g. Resize or RandomResizedCrop); edgetl adds "
                                "the normalisation and the tensor conversion itself")


def to_chw(image_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_hwc.transpose(2, 0, 1))
