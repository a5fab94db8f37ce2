"""Calibration methods: ONNX Runtime's calibrators collect each float tensor's range.

minmax      the observed min/max (every value representable; outliers widen the step)
entropy     the threshold minimising KL divergence between float and int8 histograms (TensorRT's
            IInt8EntropyCalibrator2: 2048 bins of |x|, 128 quantized bins). ONNX Runtime collects the
            histograms; edgetl searches the threshold itself, because ONNX Runtime's defaults (128 bins,
            128 quantized bins) leave one candidate, the full range, so its "entropy" ranges were
            byte-identical to minmax (and its Python search over 2048 bins takes minutes per model).
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
# Images handed to a calibrator per collect_data() call (at least one batch): ONNX Runtime's calibrators keep
# every intermediate output of a call in memory -- about 60 MB per image for EfficientNet-Lite0 at 224 px
# once the histogram calibrators have copied them, so the former 8 batches of 32 held 15 GB.
CHUNK_IMAGES = 32
# TensorRT's entropy calibrator: a 2048-bin histogram of |x|, thresholds searched from 128 bins up, each
# candidate compared through 128 quantized bins. ONNX Runtime histograms signed values over [-t, t], so it
# is asked for twice the bins and the histogram is folded.
ENTROPY_ABS_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


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
    options = ({"percentile": percentile} if method == "percentile"
               else {"num_bins": 2 * ENTROPY_ABS_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
               if method == "entropy" else {})
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
            reader.start_chunk(max(1, CHUNK_IMAGES // reader.batch_size))
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
        if method == "entropy":
            return {name: entropy_range(*h[:4]) for name, h in calibrator.collector.histogram_dict.items()}
        with _quiet():
            data = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for name, td in data.items():
        lo, hi = td.range_value
        lo, hi = float(np.asarray(lo).min()), float(np.asarray(hi).max())
        ranges[name] = (lo, hi)
    return ranges


def entropy_range(hist: np.ndarray, edges: np.ndarray, lo: float, hi: float,
                  quantized_bins: int = ENTROPY_QUANTIZED_BINS) -> tuple[float, float]:
    """(lowest, highest) of one tensor by TensorRT's KL-divergence search, from ONNX Runtime's signed histogram
    over [-t, t] (`hist`, `edges`, the observed `lo`/`hi`), as NVIDIA's pytorch-quantization computes it: fold
    it to |x|, count the zero bin like its neighbour (a ReLU's zeros say nothing about the range); for each
    candidate threshold of i bins, p = the first i bins with everything beyond added to the last, q = those
    i bins split evenly into `quantized_bins` groups, each group's mass spread over its non-empty bins; keep
    the i with the least KL(p || q). (Lumping the remainder of i / quantized_bins into the last group instead,
    as ONNX Runtime's and MXNet's searches do, lets a threshold just above 128 bins win by artefact: it clipped
    EfficientNet-Lite0's ReLU6 outputs to 0.74 of 6.)"""
    lo, hi = float(lo), float(hi)
    hist = np.asarray(hist, dtype=np.float64)
    half = len(hist) // 2
    folded = hist[half:] + hist[:half][::-1]  # |x| histogram; bin k covers [k w, (k + 1) w)
    width = float(edges[-1] - edges[0]) / len(hist)
    if width <= 0 or folded.sum() == 0 or len(folded) <= quantized_bins:
        return lo, hi
    folded[0] = folded[1]
    tail = np.concatenate([np.cumsum(folded[::-1])[::-1], [0.0]])  # tail[i] = sum(folded[i:])
    best, best_i = np.inf, len(folded)
    # at most ~512 candidates (a step of 4 of 2048 bins, 0.2% of the range): the search costs seconds, not minutes
    step = max(1, (len(folded) - quantized_bins) // 512)
    for i in list(range(quantized_bins, len(folded), step)) + [len(folded)]:
        p = folded[:i].copy()
        p[-1] += tail[i]
        nonzero = (folded[:i] != 0).astype(np.float64)
        group = np.arange(i) * quantized_bins // i
        sums = np.bincount(group, weights=folded[:i], minlength=quantized_bins)
        counts = np.bincount(group, weights=nonzero, minlength=quantized_bins)
        q = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)[group] * nonzero
        kl = _kl(p, q)
        if kl < best:
            best, best_i = kl, i
    t = best_i * width
    return max(lo, -t), min(hi, t)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) after TensorRT's smoothing (a little mass moved into empty bins, so q > 0 where p > 0)."""
    out = []
    for d in (p, q):
        zeros = d == 0
        n_zero, n_nonzero = int(zeros.sum()), int(d.size - zeros.sum())
        if n_nonzero == 0:
            return np.inf
        d = d + eps * zeros - (eps * n_zero / n_nonzero) * ~zeros
        out.append(d / d.sum())
    p, q = out
    if (q <= 0).any() or (p <= 0).any():
        return np.inf
    return float(np.sum(p * np.log(p / q)))


def tensors_data(ranges: dict[str, tuple[float, float]], method: str):
    """Cached ranges -> the TensorsData ONNX Runtime's quantizer takes."""
    TensorData, TensorsData = ort_names("onnxruntime.quantization.calibrate", "TensorData", "TensorsData")
    return TensorsData(_ort_method(method), {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.items()})


def _quiet():
    """ONNX Runtime's histogram calibrators print() their progress; edgetl shows its own."""
    return contextlib.redirect_stdout(io.StringIO())
