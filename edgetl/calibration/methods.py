"""Calibration methods: ONNX Runtime's calibrators collect each float tensor's range.

minmax      the observed min/max (every value representable; outliers widen the step)
entropy     the threshold minimising KL divergence between float and int8 histograms (TensorRT's
            classic IInt8EntropyCalibrator2 idea)
percentile  the |x| percentile (default 99.999), clipping rare outliers
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from edgetl.calibration._ort import ort_names, private_copy
from edgetl.errors import QuantizeError, first_line

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
# Batches handed to a calibrator per collect_data() call: histogram calibrators keep every
# intermediate output of a call in memory, so bounded pieces keep big models and sets in RAM.
CHUNK_BATCHES = 8


def _ort_method(method: str):
    CalibrationMethod = ort_names("onnxruntime.quantization", "CalibrationMethod")
    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise QuantizeError(f"method '{method}': unknown calibration method", f"use one of {', '.join(METHODS)} or auto")
    return table[method]


def collect_ranges(model_path: str | os.PathLike, reader, method: str,
                   percentile: float = DEFAULT_PERCENTILE) -> dict[str, tuple[float, float]]:
    """Run the calibration images through the float model; (lowest, highest) per float tensor."""
    create_calibrator = ort_names("onnxruntime.quantization.calibrate", "create_calibrator")
    ort_method = _ort_method(method)
    if not 0.0 < percentile <= 100.0:
        raise QuantizeError(f"percentile {percentile}: must be in (0, 100]")
    options = {"percentile": percentile} if method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as tmp:
        try:
            # a private copy: ONNX Runtime writes `<stem>-inferred.onnx` beside the model it is given
            calibrator = create_calibrator(private_copy(model_path, Path(tmp)), None,
                                           augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=ort_method, extra_options=options)
        except Exception as e:
            raise QuantizeError(f"{model_path}: onnxruntime cannot prepare it for calibration "
                                f"({first_line(e)})") from None
        while not reader.exhausted:
            reader.start_chunk(CHUNK_BATCHES)
            before = reader.batches_read
            try:
                with _quiet():
                    calibrator.collect_data(reader)
            except ValueError as e:
                if reader.batches_read == before:  # "No data is collected": the chunk was empty
                    break
                raise QuantizeError(f"calibration failed ({first_line(e)})") from None
        reader.start_chunk(None)
        if reader.batches_read == 0:
            raise QuantizeError("calibration read no images")
        with _quiet():
            data = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for name, td in data.items():
        lo, hi = td.range_value
        lo, hi = float(np.asarray(lo).min()), float(np.asarray(hi).max())
        ranges[name] = (lo, hi)
    return ranges


def tensors_data(ranges: dict[str, tuple[float, float]], method: str):
    """Cached ranges -> the TensorsData ONNX Runtime's quantizer takes."""
    TensorData, TensorsData = ort_names("onnxruntime.quantization.calibrate", "TensorData", "TensorsData")
    return TensorsData(_ort_method(method), {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.items()})


def _quiet():
    """ONNX Runtime's histogram calibrators print() their progress; edgetl shows its own."""
    return contextlib.redirect_stdout(io.StringIO())
