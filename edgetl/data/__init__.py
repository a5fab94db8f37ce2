"""Datasets: ImageFolder discovery and checks, albumentations pipelines, the demo data."""

from edgetl.data.dataset import ImageDataset, iter_batches, load_arrays, preprocess
from edgetl.data.folder import ImageList, check_images, load_splits, read_splits, save_splits, scan_folder
from edgetl.data.images import load_rgb

__all__ = ["ImageDataset", "ImageList", "check_images", "iter_batches", "load_arrays", "load_rgb", "load_splits",
           "preprocess", "read_splits", "save_splits", "scan_folder"]
