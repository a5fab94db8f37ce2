"""The image-check cache: what an earlier check found for each file, so the next run checks only what changed.

One JSON file per data root in the cache folder ($EDGETL_CACHE_DIR/image-check, else
$XDG_CACHE_HOME/edgetl/image-check, else ~/.cache/edgetl/image-check). An entry is keyed by the file's path
(relative to the root), size and mtime_ns; it records the check mode and the result. The whole file is valid
for one reader version (this module's format and Pillow's version: a Pillow upgrade may decode differently).

Two runs may share a cache: each writes a complete file to a temporary name and renames it over the old one
(never a half-written file), merging the entries on disk at that moment, so at worst a race loses a few
entries, which are checked again next time. A file that cannot be read as a cache is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import PIL

from edgetl.errors import RunDirError, first_line

CACHE_FORMAT = "edgetl-image-check/1"
# Bump the first part when what a check accepts changes (edgetl.data.images), so old verdicts are not reused.
READER_VERSION = f"edgetl-reader/1 Pillow/{PIL.__version__}"
CHECK_MODES = ("full", "header", "none")


def default_cache_dir() -> Path:
    if os.environ.get("EDGETL_CACHE_DIR"):
        base = Path(os.environ["EDGETL_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "edgetl"
    else:
        base = Path.home() / ".cache" / "edgetl"
    return base / "image-check"


def cache_file(cache_dir: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The cache file of a data root (its real path, so two spellings of one folder share it)."""
    real = os.path.realpath(root)
    return Path(cache_dir) / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}.json"


# An entry: [size, mtime_ns, mode, reason]; reason None means the file passed that mode's check.
Entry = list


class CheckCache:
    """The cached verdicts of one data root. `lookup` answers from a valid entry; `store` records a new one;
    `save` writes the merged file atomically."""

    def __init__(self, cache_dir: str | os.PathLike, root: str | os.PathLike,
                 warn: Callable[[str], None] | None = None):
        self.root = os.path.realpath(root)
        self._prefix = os.path.join(os.path.abspath(root), "")  # files are keyed relative to the root as listed
        self.path = cache_file(cache_dir, root)
        self._warn = warn or (lambda text: None)
        self.entries: dict[str, Entry] = self._read(warn=True)
        self._new: dict[str, Entry] = {}

    def key(self, path: str) -> str:
        path = os.path.abspath(path)
        return path[len(self._prefix):] if path.startswith(self._prefix) else os.path.relpath(path, self._prefix)

    def lookup(self, key: str, size: int, mtime_ns: int, mode: str) -> tuple[bool, str | None]:
        """(hit, reason). A verdict answers the same mode; a full check's also answers a header check (it is
        the stronger one), and a file found bad stays bad for any mode until its size or mtime changes."""
        e = self.entries.get(key)
        if e is None or e[0] != size or e[1] != mtime_ns:
            return False, None
        if e[2] == mode or e[2] == "full" or e[3] is not None:
            return True, e[3]
        return False, None

    def store(self, key: str, size: int, mtime_ns: int, mode: str, reason: str | None) -> None:
        entry = [size, mtime_ns, mode, reason]
        self.entries[key] = entry
        self._new[key] = entry

    def save(self) -> bool:
        """Write this run's new verdicts over what is on disk now (another run may have written since we read).
        A cache folder that cannot be written is a warning: the check itself succeeded."""
        if not self._new:
            return False
        from edgetl.io import atomic_path

        merged = self._read(warn=False)
        merged.update(self._new)
        doc = {"format": CACHE_FORMAT, "reader": READER_VERSION, "root": self.root, "files": merged}
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        except RunDirError as e:  # atomic_path's one line for a full disk or a read-only folder
            self._warn(f"image-check cache not written: {e.message}; the next run checks again")
            return False
        except OSError as e:
            self._warn(f"image-check cache {self.path} not written ({first_line(e)}): the next run checks again")
            return False
        self.entries = merged
        self._new = {}
        return True

    def _read(self, warn: bool) -> dict[str, Entry]:
        """The entries on disk, or {} when there is no file, it is another reader's, or it is unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # no cache yet (a folder that cannot be one: save warns)
            return {}
        except (OSError, UnicodeDecodeError) as e:
            if warn:
                self._warn(f"image-check cache {self.path} unreadable ({first_line(e)}): checking every image again")
            return {}
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
                raise ValueError("not an edgetl image-check cache")
            if doc.get("reader") != READER_VERSION or doc.get("root") != self.root:
                return {}  # written by another reader version (or a hash collision): every verdict is stale
            files = doc["files"]
            if not isinstance(files, dict) or not all(_valid_entry(e) for e in files.values()):
                raise ValueError("malformed entries")
            return files
        except (ValueError, KeyError, TypeError) as e:
            if warn:
                self._warn(f"image-check cache {self.path} is corrupt ({first_line(e)}): ignored, "
                           "checking every image again")
            return {}


def _valid_entry(e) -> bool:
    return (isinstance(e, list) and len(e) == 4 and isinstance(e[0], int) and isinstance(e[1], int)
            and e[2] in ("full", "header") and (e[3] is None or isinstance(e[3], str)))
