"""Calibrate once per (model, calibration set, method): ranges are cached in RUN/calib_cache/."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.calibration.methods import DEFAULT_PERCENTILE, collect_ranges
from edgetl.calibration.reader import ImageCalibrationReader
from edgetl.card import ModelCard
from edgetl.data import ImageList
from edgetl.io import read_json, sha256_file, write_json
from edgetl.stage import SILENT, Events

CACHE_FORMAT = 2  # 2: entropy ranges from edgetl's own KL search; format-1 files are misses


@dataclass
class CalibrationResult:
    method: str
    percentile: float | None
    ranges: dict[str, tuple[float, float]]
    calib_size: int
    calib_hash: str
    cache_file: Path
    cache_hit: bool
    seconds: float
    batches_read: int = 0
    key: dict = field(default_factory=dict)


def cache_key(model_sha256: str, calib_hash: str, method: str, percentile: float | None, batch_size: int,
              drop_last: bool) -> dict:
    # The batch matters only when a fixed graph batch drops the last partial one (fewer images seen).
    return {"format": CACHE_FORMAT, "model_sha256": model_sha256, "calib_hash": calib_hash, "method": method,
            "percentile": percentile if method == "percentile" else None,
            "drop_last_batch": batch_size if drop_last else None}


def cache_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['method']}-{digest}.json"


def calibrate(model_path: str | os.PathLike, items: ImageList, card: ModelCard, input_name: str, method: str,
              cache_dir: str | os.PathLike, batch_size: int, drop_last: bool = False,
              percentile: float = DEFAULT_PERCENTILE, calib_hash: str | None = None,
              model_sha256: str | None = None, events: Events = SILENT) -> CalibrationResult:
    """Tensor ranges of `model_path` over `items`: from the cache when the same model, files and method
    were calibrated before, else collected with ONNX Runtime's calibrator and cached (atomically)."""
    from edgetl.calibration.sampling import items_hash

    start = time.perf_counter()
    calib_hash = calib_hash or items_hash(items)
    model_sha256 = model_sha256 or sha256_file(model_path)
    key = cache_key(model_sha256, calib_hash, method, percentile, batch_size, drop_last)
    path = cache_file(Path(cache_dir), key)
    reader = ImageCalibrationReader(items, card, input_name, batch_size, drop_last=drop_last, events=events,
                                    task=f"calibrating ({method})")
    cached = _load(path, key)
    if cached is not None:
        ranges, hit = cached, True
    else:
        ranges, hit = collect_ranges(model_path, reader, method, percentile), False
        write_json(path, {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "images": reader.images_used, "ranges": {k: list(v) for k, v in ranges.items()}})
    return CalibrationResult(method=method, percentile=key["percentile"], ranges=ranges,
                             calib_size=reader.images_used, calib_hash=calib_hash, cache_file=path, cache_hit=hit,
                             seconds=time.perf_counter() - start, batches_read=reader.batches_read, key=key)


def _load(path: Path, key: dict) -> dict[str, tuple[float, float]] | None:
    """The cached ranges if `path` holds this exact key; a stale, foreign or corrupt file is a miss."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        if data.get("key") != key:
            return None
        return {name: (float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
