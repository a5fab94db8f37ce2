"""The images a bench scores and times: DIR, or the run's own validation split (splits.json)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.errors import DataError
from edgetl.rundir import RunDir


class DataSource:
    """The images a bench scores and times: DIR, or the run's own validation split (splits.json)."""

    def __init__(self, run: RunDir, data, limit: int | None):
        self.run, self.data, self.limit = run, data, limit
        self._labelled: dict[tuple, tuple] = {}
        self._inputs: dict[tuple, np.ndarray] = {}
        if data is None:
            run.require(run.splits, hint="give data DIR (an ImageFolder of labelled images)")
            self.description = f"{run.splits.name} (the run's validation split)"
        else:
            self.description = str(data)

    def labelled(self, card) -> tuple[Any, str | None]:
        """(ImageList in the model's label order, None) or (None, why top-1 cannot be scored)."""
        from edgetl.data import read_splits, scan_folder

        key = tuple(card.class_names)
        if key not in self._labelled:
            try:
                items = read_splits(self.run.splits)[1] if self.data is None else scan_folder(self.data, classes=card.class_names)
                if list(items.classes) != list(card.class_names):
                    raise DataError(f"{self.description}: classes {items.classes} differ from the model's {card.class_names}")
                if self.limit is not None:
                    items = items.subset(range(min(self.limit, len(items))))
                self._labelled[key] = (items, None)
            except DataError as e:
                self._labelled[key] = (None, f"top-1 not scored: {str(e)}")
        return self._labelled[key]

    def inputs(self, card, n: int) -> np.ndarray:
        """Up to n preprocessed images for timing (labels not needed, so unknown classes still time)."""
        from edgetl.data import load_arrays, scan_folder

        key = (card.to_json(), n)
        if key not in self._inputs:
            items, note = self.labelled(card)
            if items is None:
                if self.data is None:
                    raise DataError(note or "no images to time")
                items = scan_folder(self.data)  # any images will do for timing
            self._inputs[key] = load_arrays(items, card, limit=n)[0]
        return self._inputs[key]
