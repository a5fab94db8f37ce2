"""ImageFolder discovery: classes, train/val split, and up-front checking of every image."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.data.images import is_image_file, load_rgb
from edgetl.errors import DataError


@dataclass
class ImageList:
    """Labelled image files with their class names (label i is classes[i])."""

    classes: list[str]
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "ImageList":
        return ImageList(self.classes, [self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def spread(self, n: int) -> "ImageList":
        """At most `n` items spread evenly, first and last included: a split lists its images class by
        class, so its first `n` would cover the first classes only."""
        n = min(n, len(self))
        index = np.linspace(0, len(self) - 1, n).round().astype(int)  # distinct: the step is >= 1
        return self.subset(index.tolist())

    def to_dict(self) -> dict:
        return {"classes": self.classes, "paths": self.paths, "labels": self.labels}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageList":
        return cls(list(d["classes"]), list(d["paths"]), [int(x) for x in d["labels"]])


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None) -> ImageList:
    """Read ROOT/<class>/<image>. With `classes`, labels follow that order and unknown folders fail."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder", "give a folder of class sub-folders (ImageFolder layout)")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder", "give a folder of class sub-folders (ImageFolder layout)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{root}: has no class sub-folders", "expected ROOT/<class>/<image>.jpg")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{root}: classes the model does not know: {', '.join(unknown)}",
                f"the model was trained on: {', '.join(classes)}",
            )
    items = ImageList(list(classes))
    index = {c: i for i, c in enumerate(classes)}
    for name in found:
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, filenames in os.walk(root / name)
            for f in filenames
            if is_image_file(f)
        )
        if not files:
            raise DataError(f"{root / name}: class folder has no images", "add images or remove the folder")
        items.paths += files
        items.labels += [index[name]] * len(files)
    return items


def load_splits(data: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageList, ImageList]:
    """DATA/train + DATA/val if both exist, else DATA/<class> split per class (stratified, seeded)."""
    data = Path(data)
    train_dir, val_dir = data / "train", data / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train = scan_folder(train_dir)
        val_classes = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if set(val_classes) != set(train.classes):
            only_train = sorted(set(train.classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train.classes))
            parts = [f"only in train: {', '.join(only_train)}" if only_train else "",
                     f"only in val: {', '.join(only_val)}" if only_val else ""]
            raise DataError(f"{data}: train and val have different classes ({'; '.join(p for p in parts if p)})",
                            "give both splits the same class folders")
        val = scan_folder(val_dir, train.classes)
    else:
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1")
        full = scan_folder(data)
        train, val = stratified_split(full, val_fraction, seed)
    if len(train.classes) < 2:
        raise DataError(f"{data}: only one class ({train.classes[0]})", "a classifier needs at least two class folders")
    return train, val


def stratified_split(items: ImageList, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    rng = np.random.default_rng(seed)
    labels = np.asarray(items.labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c, name in enumerate(items.classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise DataError(f"class '{name}' has {len(idx)} image(s)", "each class needs at least 2 to split train/val")
        idx = rng.permutation(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return items.subset(sorted(train_idx)), items.subset(sorted(val_idx))


def check_images(items: ImageList, skip_bad: bool, progress=None) -> tuple[ImageList, list[tuple[str, str]]]:
    """Decode every image once. Returns the usable ones and (path, reason) for each bad one.

    Without `skip_bad`, the first bad image raises one DataError that also counts the others.
    """
    good: list[int] = []
    bad: list[tuple[str, str]] = []
    for i, path in enumerate(items.paths):
        try:
            load_rgb(path)
            good.append(i)
        except DataError as e:
            bad.append((path, e.message.split(": ", 1)[-1]))
        if progress is not None:
            progress(i + 1, len(items))
    if bad and not skip_bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}", "fix or remove them, or pass --skip-bad-images")
    kept = items.subset(good)
    missing = [c for i, c in enumerate(items.classes) if i not in set(kept.labels)]
    if missing:
        raise DataError(f"no readable images left for class(es): {', '.join(missing)}")
    return kept, bad


def save_splits(path: str | os.PathLike, train: ImageList, val: ImageList) -> None:
    from edgetl.io import write_json

    write_json(path, {"train": train.to_dict(), "val": val.to_dict()})


def read_splits(path: str | os.PathLike) -> tuple[ImageList, ImageList]:
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    return ImageList.from_dict(d["train"]), ImageList.from_dict(d["val"])
