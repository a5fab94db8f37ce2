"""A source model without labels or downloads: rotation prediction on unlabelled images.

Self-supervised pretraining (Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018): every unlabelled image is turned by 0, 90, 180 and 270 degrees and labelled with
its turn. Telling the turn of a digit needs its shape (where the loop, the stroke, the tail are), so the
backbone learns shape features of the whole domain, not only of the classes some other labelled task had.
The turned images are an ordinary ImageFolder and edgetl's own finetune trains on it, so the source is a
normal run directory that `--weights` takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from edgetl.data.images import is_image_file
from edgetl.errors import DataError

ROTATIONS = (0, 90, 180, 270)


def rotation_class(degrees: int) -> str:
    return f"rot{degrees:03d}"  # zero-padded: ImageFolder sorts class names, so label order is angle order


def write_rotation_folder(images: Iterable[str | os.PathLike], root: str | os.PathLike, val_fraction: float = 0.1,
                          seed: int = 0) -> Path:
    """root/{train,val}/rot{000,090,180,270}/: each image in its four turns. All four turns of an image go
    to the same split, so val never holds a turn of a training image. Idempotent."""
    paths = sorted(str(p) for p in images)
    if not paths:
        raise DataError("rotation pretraining: no unlabelled images given")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = max(1, int(round(len(paths) * val_fraction)))
    root = Path(root)
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        with Image.open(paths[i]) as im:
            image = im.convert("L")
            for degrees in ROTATIONS:
                out = root / split / rotation_class(degrees) / f"{i:05d}.png"
                if not out.exists():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    image.rotate(degrees, expand=True).save(out)  # counter-clockwise; square images keep their size
    return root


def unlabelled_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder`, any depth (labels in folder names, if any, are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of unlabelled images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p.name))


def pretrain_rotation(images: Iterable[str | os.PathLike], out: str | os.PathLike, events=None, **settings):
    """Train `settings["model"]` into the run directory `out` to predict the turn of each image (a source for
    `weights`); returns its FinetuneResult. `settings` are FinetuneSettings fields (data is set here)."""
    from edgetl.finetune import FinetuneSettings, finetune
    from edgetl.stage import SILENT

    out = Path(out)
    data = write_rotation_folder(images, out.parent / f"{out.name}-data", seed=settings.get("seed", 0))
    return finetune(out, FinetuneSettings(data=str(data), **settings), events or SILENT, overwrite=True)
