"""ImageFolder discovery: classes, the train/val split, and the split lists a run records."""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.data.images import is_image_file
from edgetl.errors import DataError, first_line


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


def check_class_name(name: str, where: str | os.PathLike) -> None:
    """Class names end up as lines of Triton's labels.txt, JSON and table cells: a line break or other
    control character (or a byte that is not text in the file system's encoding) would split or garble them."""
    bad = [ch for ch in name if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")]
    if bad:
        raise DataError(f"{where}: class folder name {name!r} holds a control character ({ascii(bad[0])})",
                        "rename the folder to plain text: the name becomes the class label")


def _check_class_dir(folder: Path, inside: list[Path]) -> None:
    """A class folder that is a symlink may point outside the data (a data set assembled from links), but
    not back into it: that would read the same images again under another label (or loop)."""
    if not folder.is_symlink():
        return
    target = Path(os.path.realpath(folder))
    for root in inside:
        real = Path(os.path.realpath(root))
        if target == real or real in target.parents or target in real.parents:
            raise DataError(f"{folder}: class folder is a symlink to {target}, inside {root} (or above it): "
                            "its images would be read twice, under two labels",
                            "replace the link by the images it should hold, or remove it")


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None,
                within: str | os.PathLike | None = None) -> ImageList:
    """Read ROOT/<class>/<image>. With `classes`, labels follow that order and unknown folders fail.
    Only regular files with an image extension count (a FIFO or device fails when it is read);
    a symlinked class folder must resolve outside ROOT (and outside `within`, the whole data set)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder", "give a folder of class sub-folders (ImageFolder layout)")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder", "give a folder of class sub-folders (ImageFolder layout)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for name in found:
        check_class_name(name, root)
        _check_class_dir(root / name, [root] + ([Path(within)] if within is not None else []))
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
        files = image_files(root / name)
        if not files:
            raise DataError(f"{root / name}: class folder has no images", "add images or remove the folder")
        items.paths += files
        items.labels += [index[name]] * len(files)
    return items


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every file with an image extension under `folder`, sub-folders included, sorted."""
    return sorted(os.path.join(dirpath, f) for dirpath, _, filenames in os.walk(folder) for f in filenames
                  if is_image_file(f))


def load_splits(data: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageList, ImageList]:
    """DATA/train + DATA/val if both exist, else DATA/<class> split per class (stratified, seeded)."""
    data = Path(data)
    train_dir, val_dir = data / "train", data / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        if os.path.realpath(train_dir) == os.path.realpath(val_dir):
            raise DataError(f"{data}: train and val are the same folder ({os.path.realpath(val_dir)})",
                            "give val its own images")
        train = scan_folder(train_dir, within=data)
        val_classes = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if set(val_classes) != set(train.classes):
            only_train = sorted(set(train.classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train.classes))
            parts = [f"only in train: {', '.join(only_train)}" if only_train else "",
                     f"only in val: {', '.join(only_val)}" if only_val else ""]
            raise DataError(f"{data}: train and val have different classes ({'; '.join(p for p in parts if p)})",
                            "give both splits the same class folders")
        val = scan_folder(val_dir, train.classes, within=data)
    else:
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1")
        full = scan_folder(data)
        train, val = stratified_split(full, val_fraction, seed)
    if len(train.classes) < 2:
        raise DataError(f"{data}: only one class ({train.classes[0]})", "a classifier needs at least two class folders")
    return train, val


def test_split(data: str | os.PathLike, classes: list[str]) -> ImageList | None:
    """DATA/test/<class> when DATA holds train/ and val/ folders too, else None (in the DATA/<class> layout a
    folder named test is a class). Val chooses the best epoch, so its score is optimistic; test is scored once."""
    data = Path(data)
    if not ((data / "train").is_dir() and (data / "val").is_dir() and (data / "test").is_dir()):
        return None
    return scan_folder(data / "test", classes, within=data)


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


SPLITS_FORMAT = "edgetl-splits/2"


def save_splits(path: str | os.PathLike, train: ImageList, val: ImageList, root: str | os.PathLike | None = None) -> None:
    """Write the split lists with image paths relative to `root` (default: the folder holding them all).

    The root is stored twice: absolute, and relative to the run directory, so the run keeps working from
    any working directory, after the run is moved (absolute root) and after run and data move together
    (relative root).
    """
    from edgetl.io import write_json

    run_dir = Path(path).resolve().parent
    every = [os.path.abspath(p) for p in train.paths + val.paths]
    if root is None:
        root = os.path.commonpath(every) if every else os.getcwd()
        if len(every) == 1:
            root = os.path.dirname(root)
    root_abs = os.path.abspath(root)
    root_real = os.path.realpath(root_abs)

    def listing(items: ImageList) -> dict:
        rel = [Path(os.path.relpath(os.path.abspath(p), root_abs)).as_posix() for p in items.paths]
        return {"classes": items.classes, "paths": rel, "labels": items.labels}

    write_json(path, {"format": SPLITS_FORMAT, "root": root_real,
                      "root_relative_to_run": Path(os.path.relpath(root_real, run_dir)).as_posix(),
                      "train": listing(train), "val": listing(val)})


def read_splits(path: str | os.PathLike) -> tuple[ImageList, ImageList]:
    """The run's train and val lists with absolute image paths. Reads this format and the first one
    (paths as written, relative to where finetune ran)."""
    from edgetl.errors import RunDirError

    path = Path(path)
    hint = "splits.json is written by `edgetl finetune`: re-run it, or restore the file"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path.parent}: {path.name} is missing", hint) from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({first_line(e)})", hint) from None
    try:
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        train, val = _split_from_dict(d, "train"), _split_from_dict(d, "val")
        if train.classes != val.classes:
            raise ValueError("train and val list different classes")
        if d.get("format") is None:
            return train, val  # first format: paths as written, relative to finetune's working directory
        if d["format"] != SPLITS_FORMAT:
            raise ValueError(f"format {d['format']!r}, this edgetl reads {SPLITS_FORMAT!r}")
        if not isinstance(d.get("root"), str) or not isinstance(d.get("root_relative_to_run"), str):
            raise ValueError("'root' and 'root_relative_to_run' must be strings")
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise RunDirError(f"{path}: not an edgetl splits file ({what})", hint) from None
    root = _find_root(path, d, train, val)
    for items in (train, val):
        items.paths = [os.path.join(root, p) for p in items.paths]
    return train, val


def _split_from_dict(d: dict, key: str) -> ImageList:
    part = d[key]
    if not isinstance(part, dict):
        raise ValueError(f"'{key}' is not an object")
    classes, paths, labels = part["classes"], part["paths"], part["labels"]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"'{key}.classes' is not a list of names")
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise ValueError(f"'{key}.paths' is not a list of paths")
    if not (isinstance(labels, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in labels)):
        raise ValueError(f"'{key}.labels' is not a list of integers")
    if len(paths) != len(labels):
        raise ValueError(f"'{key}' has {len(paths)} paths and {len(labels)} labels")
    if any(not 0 <= x < len(classes) for x in labels):
        raise ValueError(f"'{key}' has a label outside 0..{len(classes) - 1}")
    return ImageList(list(classes), list(paths), list(labels))


def _find_root(path: Path, d: dict, train: ImageList, val: ImageList) -> str:
    """The data folder the lists are relative to: beside the run as recorded (run and data moved
    together), else at its absolute path (the run moved alone)."""
    sample = (train.paths[:1] + val.paths[:1])
    candidates = [os.path.normpath(os.path.join(path.resolve().parent, d["root_relative_to_run"])), d["root"]]
    for root in candidates:
        if os.path.isdir(root) and all(os.path.exists(os.path.join(root, p)) for p in sample):
            return root
    raise DataError(f"{path}: the run's images are gone: not under {d['root']} nor {candidates[0]} "
                    "(relative to the run)", "put the data folder back where it was (or a link to it)")
