"""Datasets: ImageFolder discovery and checks, albumentations pipelines, the demo data.

Names are imported on first use (PEP 562): a process that needs only `edgetl.data.images` (an image-check
worker) then starts without loading albumentations, OpenCV and pydantic.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ImageDataset": "dataset", "iter_batches": "dataset", "load_arrays": "dataset", "preprocess": "dataset",
    "ImageList": "folder", "load_splits": "folder", "read_splits": "folder", "save_splits": "folder",
    "scan_folder": "folder", "test_split": "folder",
    "check_images": "check", "check_splits": "check",
    "load_rgb": "images",
    "make_loader": "loader",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'edgetl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetl.data.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
