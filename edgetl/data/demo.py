"""The embedded demo data: scikit-learn's handwritten digits (shipped inside the package, no download),
written out as ImageFolders for a transfer-learning task.

source/    digits 0-4, all samples, a random 80/20 train/val split   (the "pretraining" task)
target/    digits 5-9, only `shots` labelled images per class in train, the rest in val
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE_CLASSES = ("0", "1", "2", "3", "4")
TARGET_CLASSES = ("5", "6", "7", "8", "9")


def digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 (N, size, size) greyscale images and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    return big, d.target.astype(np.int64)


def write_demo_data(root: str | os.PathLike, size: int = 32, shots: int = 10, seed: int = 0,
                    per_class_limit: int | None = None) -> dict[str, Path]:
    """Write source/{train,val}/<digit> and target/{train,val}/<digit> PNGs under `root`. Idempotent."""
    root = Path(root)
    images, labels = digits_images(size)
    rng = np.random.default_rng(seed)
    layout = {"source": SOURCE_CLASSES, "target": TARGET_CLASSES}
    for task, classes in layout.items():
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == int(c)))
            if per_class_limit:
                idx = idx[:per_class_limit]
            n_train = shots if task == "target" else int(round(len(idx) * 0.8))
            for split, part in (("train", idx[:n_train]), ("val", idx[n_train:])):
                folder = root / task / split / c
                folder.mkdir(parents=True, exist_ok=True)
                for i in part:
                    path = folder / f"{i:04d}.png"
                    if not path.exists():
                        Image.fromarray(images[i], mode="L").save(path)
    return {task: root / task for task in layout}
