"""Calibration for INT8: which images (sampling), how they are fed (reader), how ranges are
collected (methods) and kept for the next run (cache)."""

from edgetl.calibration.cache import CalibrationResult, calibrate
from edgetl.calibration.methods import METHODS, DEFAULT_PERCENTILE
from edgetl.calibration.reader import ImageCalibrationReader
from edgetl.calibration.sampling import calibration_items, items_hash, stratified_sample

__all__ = ["CalibrationResult", "DEFAULT_PERCENTILE", "ImageCalibrationReader", "METHODS", "calibrate",
           "calibration_items", "items_hash", "stratified_sample"]
