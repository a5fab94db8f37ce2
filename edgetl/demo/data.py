"""The embedded demo data: scikit-learn's handwritten digits (shipped inside the package, no download),
written out as ImageFolders for a transfer-learning task.

source/      digits 0-4, all samples, a random 80/20 train/val split   (a small supervised source task)
target/      digits 5-9, only `shots` labelled images per class in train; val is the rest, or with `holdout`
             a fixed share of each class that does not depend on `shots` or `shot_seed`; with `val_per_class`
             too, val keeps that many of the held-out images a class and target/test holds the others (val
             chooses the best epoch, test scores it once)
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


def target_split(labels: np.ndarray, holdout: float, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per target class: (labelled pool, held-out val) indices. Val depends on `seed` only, so runs with
    different shot counts or shot seeds are scored on the same images."""
    rng = np.random.default_rng(seed)
    split = {}
    for c in TARGET_CLASSES:
        idx = rng.permutation(np.flatnonzero(labels == int(c)))
        n_val = int(round(len(idx) * holdout))
        split[c] = (idx[n_val:], idx[:n_val])
    return split


def pick_shots(pool: np.ndarray, shots: int | None, shot_seed: int) -> np.ndarray:
    """`shots` images of one class's pool drawn by `shot_seed` (all of it for None)."""
    order = np.random.default_rng([shot_seed, int(pool[0]) if len(pool) else 0]).permutation(pool)
    return order if shots is None else order[:shots]


def write_demo_data(root: str | os.PathLike, size: int = 32, shots: int | None = 10, seed: int = 0,
                    per_class_limit: int | None = None, holdout: float | None = None,
                    shot_seed: int | None = None, val_per_class: int | None = None,
                    source: bool = True) -> dict[str, Path]:
    """Write source/{train,val}/<digit> (unless not `source`) and target/{train,val}/<digit> PNGs under `root`
    (and target/test/<digit> with `holdout` and `val_per_class`). Idempotent for the same arguments."""
    root = Path(root)
    images, labels = digits_images(size)
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for c in SOURCE_CLASSES + TARGET_CLASSES:
        idx = rng.permutation(np.flatnonzero(labels == int(c)))
        if per_class_limit:
            idx = idx[:per_class_limit]
        if c in SOURCE_CLASSES:
            if not source:
                continue
            n_train = int(round(len(idx) * 0.8))
            parts[f"source/train/{c}"], parts[f"source/val/{c}"] = idx[:n_train], idx[n_train:]
        elif holdout is None:
            n_train = len(idx) if shots is None else shots
            parts[f"target/train/{c}"], parts[f"target/val/{c}"] = idx[:n_train], idx[n_train:]
    out = {"source": root / "source", "target": root / "target"}
    if holdout is not None:
        limited = labels if not per_class_limit else _limit(labels, per_class_limit)
        for c, (pool, val) in target_split(limited, holdout, seed).items():
            parts[f"target/train/{c}"] = pick_shots(pool, shots, seed if shot_seed is None else shot_seed)
            parts[f"target/val/{c}"] = val[:val_per_class]
            if val_per_class is not None:
                parts[f"target/test/{c}"] = val[val_per_class:]
    if not source:
        del out["source"]
    for folder, idx in parts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in idx:
            path = root / folder / f"{i:04d}.png"
            if not path.exists():
                Image.fromarray(images[i], mode="L").save(path)
    return out


def _limit(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Labels with all but the first `per_class` images of each class marked -1 (unused)."""
    limited = np.full_like(labels, -1)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)[:per_class]
        limited[idx] = c
    return limited


def write_inverted(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """dst/<class>/<image>: every image of src inverted (white digits on black), a domain shift for the demo's
    `edgetl shift` check. Idempotent."""
    src, dst = Path(src), Path(dst)
    for path in sorted(src.rglob("*.png")):
        out = dst / path.relative_to(src)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - np.asarray(Image.open(path).convert("L")), mode="L").save(out)
    return dst
