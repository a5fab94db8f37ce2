"""Calibration: stratified seeded sampling, eval-preprocessed reader, methods, and the range cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.calibration import calibrate, calibration_items, items_hash, stratified_sample
from edgetl.calibration.methods import collect_ranges
from edgetl.calibration.reader import ImageCalibrationReader
from edgetl.card import ModelCard
from edgetl.data import ImageList, iter_batches, scan_folder
from edgetl.errors import DataError, QuantizeError
from edgetl.export.run import export
from edgetl.rundir import RunDir


@pytest.fixture(scope="module")
def exported(train_run, tmp_path_factory) -> Path:
    """A private copy of the session's resnet18 digits run (the one tests/test_quantize.py uses) with model.onnx."""
    dst = tmp_path_factory.mktemp("calib") / "run"
    shutil.copytree(train_run("resnet18"), dst)
    export(dst)
    return dst


def _items(n_per_class=(50, 30, 20)) -> ImageList:
    paths, labels = [], []
    for c, n in enumerate(n_per_class):
        paths += [f"/x/{c}/{i}.png" for i in range(n)]
        labels += [c] * n
    return ImageList(["a", "b", "c"], paths, labels)


def test_stratified_sample_keeps_class_shares_and_is_seeded():
    items = _items()
    s = stratified_sample(items, 20, seed=0)
    counts = np.bincount(s.labels, minlength=3)
    assert counts.tolist() == [10, 6, 4]  # 50/30/20 of 100 -> 20
    assert stratified_sample(items, 20, seed=0).paths == s.paths
    assert stratified_sample(items, 20, seed=1).paths != s.paths
    assert len(set(s.paths)) == 20 and set(s.paths) <= set(items.paths)


def test_stratified_sample_small_size_still_sees_every_class():
    items = _items((97, 2, 1))
    s = stratified_sample(items, 5, seed=0)
    assert len(s) == 5
    assert set(s.labels) == {0, 1, 2}


def test_stratified_sample_all_when_fewer_and_bad_size():
    items = _items()
    assert stratified_sample(items, 1000).paths == items.paths
    assert stratified_sample(items, None).paths == items.paths
    with pytest.raises(DataError):
        stratified_sample(items, 0)


def test_calibration_items_default_is_train_split_and_hash_tracks_content(exported, digits, tmp_path):
    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    items = calibration_items(run, card, None, size=40, seed=0)
    assert len(items) == 40 and items.classes == card.class_names
    assert set(items.labels) == set(range(len(card.class_names)))
    h = items_hash(items)
    # Moving the folder keeps the hash (contents, not names); changing one image changes it.
    copy = tmp_path / "calib"
    shutil.copytree(digits["source"] / "train", copy)
    moved = scan_folder(copy, classes=card.class_names)
    original = scan_folder(digits["source"] / "train", classes=card.class_names)
    assert items_hash(moved) == items_hash(original)
    first = Path(moved.paths[0])
    first.write_bytes(Path(moved.paths[1]).read_bytes())
    assert items_hash(moved) != items_hash(original)
    assert h == items_hash(calibration_items(run, card, None, size=40, seed=0))


def test_reader_feeds_eval_preprocessing_in_batches(exported):
    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    items = calibration_items(run, card, None, size=20, seed=0)
    reader = ImageCalibrationReader(items, card, "images", batch_size=8)
    batches = []
    while (b := reader.get_next()) is not None:
        batches.append(b["images"])
    assert [len(b) for b in batches] == [8, 8, 4] and reader.batches_read == 3
    # in chunks (how calibration reads), the last partial batch is a chunk of its own: ONNX Runtime's
    # histogram calibrators stack one chunk's outputs and fail on a ragged list
    chunked = ImageCalibrationReader(items, card, "images", batch_size=8)
    sizes = []
    while not chunked.exhausted:
        chunked.start_chunk(8)
        sizes.append([len(b["images"]) for b in iter(chunked.get_next, None)])
    assert sizes == [[8, 8], [4]] and chunked.batches_read == 3
    expected = next(iter_batches(items, card, 8))[0]
    np.testing.assert_array_equal(batches[0], expected)  # the card's eval pipeline, no augmentation
    dropped = ImageCalibrationReader(items, card, "images", batch_size=8, drop_last=True)
    assert dropped.images_used == 16 and len(dropped) == 2


def test_methods_give_different_ranges_and_percentile_clips(exported):
    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    # 37 images in batches of 16: a last partial batch (entropy and percentile used to fail on it)
    items = calibration_items(run, card, None, size=37, seed=0)
    ranges = {m: collect_ranges(run.onnx, ImageCalibrationReader(items, card, "images", 16), m)
              for m in ("minmax", "percentile", "entropy")}
    assert ranges["minmax"].keys() == ranges["percentile"].keys() == ranges["entropy"].keys()
    assert len(ranges["minmax"]) > 10
    names = sorted(ranges["minmax"])
    # percentile (99.999 of |x|, symmetric) and entropy (a KL threshold) never exceed max |x|, and clip somewhere;
    # entropy clips most tensors (ONNX Runtime's own defaults left it byte-identical to minmax)
    mm_abs = np.array([max(abs(v) for v in ranges["minmax"][n]) for n in names])
    for m in ("percentile", "entropy"):
        m_abs = np.array([max(abs(v) for v in ranges[m][n]) for n in names])
        assert np.all(m_abs <= mm_abs * 1.0001) and np.any(m_abs < mm_abs * 0.999), m
    en_abs = np.array([max(abs(v) for v in ranges["entropy"][n]) for n in names])
    assert (en_abs < mm_abs * 0.99).mean() > 0.5
    with pytest.raises(QuantizeError):
        collect_ranges(run.onnx, ImageCalibrationReader(items, card, "images", 16), "kl")


def test_cache_hit_reads_no_images_and_key_changes_miss(exported, tmp_path):
    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    items = calibration_items(run, card, None, size=32, seed=0)
    first = calibrate(run.onnx, items, card, "images", "minmax", tmp_path, batch_size=16)
    assert not first.cache_hit and first.batches_read == 2 and first.cache_file.is_file()
    second = calibrate(run.onnx, items, card, "images", "minmax", tmp_path, batch_size=16)
    assert second.cache_hit and second.batches_read == 0
    assert second.ranges.keys() == first.ranges.keys()
    assert all(np.allclose(second.ranges[k], first.ranges[k]) for k in first.ranges)
    # another calibration set, another method: misses, new files
    other = calibrate(run.onnx, calibration_items(run, card, None, size=32, seed=1), card, "images", "minmax",
                      tmp_path, batch_size=16)
    assert not other.cache_hit and other.cache_file != first.cache_file
    # a corrupt cache file is a miss, not a crash
    first.cache_file.write_text("{not json")
    again = calibrate(run.onnx, items, card, "images", "minmax", tmp_path, batch_size=16)
    assert not again.cache_hit and again.batches_read == 2


def test_missing_onnxruntime_tool_is_one_clear_error():
    from edgetl.calibration._ort import ort_names

    with pytest.raises(QuantizeError, match=r"onnxruntime \S+ lacks onnxruntime\.quantization\.NoSuchTool") as e:
        ort_names("onnxruntime.quantization", "NoSuchTool")
    assert "pip install" in e.value.hint
    with pytest.raises(QuantizeError, match="lacks onnxruntime.no_such_module.X"):
        ort_names("onnxruntime.no_such_module", "X")
    quant_type, method = ort_names("onnxruntime.quantization", "QuantType", "CalibrationMethod")
    assert quant_type.QInt8 and method.MinMax


def test_entropy_threshold_clips_a_rare_outlier_and_keeps_the_bulk():
    """TensorRT's KL search on a histogram as ONNX Runtime collects it (signed, over [-t, t]): a Gaussian bulk
    (sigma 1) with a few values at 40 sigma. minmax would spend the int8 steps on the outlier; the entropy
    threshold lands between the bulk's tail and the outlier."""
    from edgetl.calibration.methods import entropy_range

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 200_000), [40.0] * 3]).astype(np.float32)
    hist, edges = np.histogram(x, 4096, range=(-40.0, 40.0))
    lo, hi = entropy_range(hist, edges, float(x.min()), float(x.max()))
    assert 3.0 < hi < 12.0 and lo == pytest.approx(max(float(x.min()), -hi))
    # nothing to clip: a uniform spread keeps (nearly) its whole range
    u = rng.uniform(-1, 1, 100_000).astype(np.float32)
    hist, edges = np.histogram(u, 4096, range=(-1.0, 1.0))
    assert entropy_range(hist, edges, float(u.min()), float(u.max()))[1] > 0.9


def test_entropy_threshold_keeps_a_heavy_relu6_tail():
    """ReLU6-like activations: half zeros, most of the rest small, a thin tail up to a spike at 6 (EfficientNet-
    Lite0). Lumping the remainder bins into the last quantized bin (ONNX Runtime's, MXNet's search) made a
    threshold just above 128 bins win by artefact: 0.74 of 6, which ruined Lite0; the even split keeps the tail."""
    from edgetl.calibration.methods import entropy_range

    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(300_000), np.abs(rng.normal(0, 0.3, 300_000)), rng.uniform(0, 6, 3000),
                        np.full(1000, 6.0)]).astype(np.float32)
    hist, edges = np.histogram(y, 4096, range=(-6.0, 6.0))
    assert entropy_range(hist, edges, 0.0, 6.0)[1] > 3.0
