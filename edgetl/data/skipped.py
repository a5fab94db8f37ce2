"""Images a run left out: the marker a dataset returns for an image it cannot read, and RUN/bad_images.json.

RUN/bad_images.json lists every image the run did not train on, with where it was found: "check" (the
up-front check, with skip_bad_images) or "training" (a file that passed a header check, or changed after the
check, and failed to decode in a data loader worker; always skipped, never a crash mid-epoch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

BAD_IMAGES_FORMAT = "edgetl-bad-images/1"


@dataclass(frozen=True)
class BadImage:
    """What a dataset returns in place of (image, label) for a file it cannot read; the collate drops it."""

    path: str
    reason: str


class SkippedImages:
    """The run's list of left-out images, kept in `path` (rewritten atomically on every addition; an existing
    file is read first, so a resumed run keeps what the interrupted one found)."""

    def __init__(self, path: str | os.PathLike, message: Callable[[str], None] | None = None):
        self.path = Path(path)
        self._message = message or (lambda text: None)
        self.images: list[dict] = self._read()
        self._seen = {e["path"] for e in self.images}

    def add(self, bad: Iterable[BadImage | tuple[str, str]], found: str, epoch: int | None = None) -> list[str]:
        """Record the images not listed yet; returns their paths. `epoch` is 1-based, as in train_log.csv."""
        new = []
        for item in bad:
            path, reason = (item.path, item.reason) if isinstance(item, BadImage) else item
            if path in self._seen:
                continue
            self._seen.add(path)
            self.images.append({"path": path, "reason": reason, "found": found, "epoch": epoch})
            new.append(path)
        if new:
            from edgetl.io import write_json

            write_json(self.path, {"format": BAD_IMAGES_FORMAT, "images": self.images})
            if found == "training":
                for path in new:
                    reason = next(e["reason"] for e in self.images if e["path"] == path)
                    self._message(f"skipped unreadable image {path} ({reason}) in epoch {epoch}; "
                                  f"listed in {self.path.name}")
        return new

    def _read(self) -> list[dict]:
        from edgetl.io import read_json

        if not self.path.exists():
            return []
        try:
            doc = read_json(self.path)
            images = doc["images"]
            if doc.get("format") != BAD_IMAGES_FORMAT or not isinstance(images, list):
                raise ValueError
            return [e for e in images if isinstance(e, dict) and isinstance(e.get("path"), str)]
        except Exception:  # edgetl's own file, written atomically: unreadable only if edited by hand
            self._message(f"{self.path}: not an edgetl list of bad images; it is written again")
            return []
