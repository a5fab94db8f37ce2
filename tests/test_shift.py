"""`edgetl shift` on the digits: held-out digits look like training; inverted, rotated and noisy ones are shifted;
a one-class calibration is flagged as not covering the others; and the statistics on hand-made cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.demo.data import digits_images
from edgetl.shift import ShiftSettings
from edgetl.shift.run import COVERED, LOOKS_LIKE, NOT_COVERED, SHIFTED, shift

NEW_IMAGES = 100  # held-out digits 0-4, 20 a class


def _write(root: Path, images: np.ndarray, labels: np.ndarray, change=lambda a: a, labelled: bool = True) -> Path:
    for i, (im, y) in enumerate(zip(images, labels)):
        folder = root / str(y) if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(change(im), mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def held_out(digits):
    """Digits 0-4 that neither split of the trained run holds: the same distribution, never seen."""
    images, labels = digits_images(32)
    used = {int(p.stem) for p in Path(digits["source"]).rglob("*.png")}
    picked = [i for c in range(5) for i in np.flatnonzero(labels == c) if i not in used][:10_000]
    picked = np.array([i for c in range(5) for i in [j for j in picked if labels[j] == c][:NEW_IMAGES // 5]])
    return images[picked], labels[picked]


@pytest.fixture(scope="module")
def quantized_run(exported_copy):
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("shift")
    quantize(run, QuantizeSettings(max_drop=100.0))
    return run


def test_held_out_digits_look_like_training(quantized_run, held_out, tmp_path):
    new = _write(tmp_path / "new", *held_out)
    result = shift(quantized_run, ShiftSettings(data=str(new), permutations=500))
    f = result.features
    assert f.verdict == LOOKS_LIKE and f.mmd_p >= 0.01, f
    assert abs(f.median_score - f.val_median_score) < 0.5 * f.val_median_score
    assert result.coverage.verdict == COVERED and result.coverage.reference == "calibration images"
    assert result.coverage.int8_agreement >= 0.95
    # top-1 is near val's, though not always within chance: val also chose the best epoch (and is small)
    assert result.labelled and result.accuracy.new_top1 >= 0.8
    assert set(result.accuracy.per_class) == {"0", "1", "2", "3", "4"}
    written = json.loads(Path(result.json_path).read_text())
    assert written["features"]["mmd_p"] == f.mmd_p and Path(result.png_path).stat().st_size > 10_000
    # the training side is cached: a second folder reuses it, and gives the same val numbers
    again = shift(quantized_run, ShiftSettings(data=str(new), permutations=500))
    assert again.features.threshold == f.threshold and again.features.mmd_p == f.mmd_p


@pytest.mark.parametrize("change", ["inverted", "rotated", "noisy"])
def test_changed_digits_are_shifted(quantized_run, held_out, tmp_path, change):
    rng = np.random.default_rng(0)
    how = {"inverted": lambda a: 255 - a, "rotated": lambda a: np.ascontiguousarray(np.rot90(a)),
           "noisy": lambda a: np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)}[change]
    new = _write(tmp_path / change, *held_out, change=how)
    result = shift(quantized_run, ShiftSettings(data=str(new), permutations=500))
    f = result.features
    assert f.verdict == SHIFTED and f.mmd_p < 0.01 and f.above_p < 0.01, f
    assert f.above > 0.5  # most images beyond val's 95th percentile
    assert SHIFTED in result.verdicts
    # the images listed first are the new ones furthest from training
    scores = [r.score for r in result.least_like_training]
    assert scores == sorted(scores, reverse=True) and scores[0] > f.threshold


def test_one_class_calibration_is_flagged(exported_copy, digits, held_out, tmp_path):
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("narrow")
    narrow = tmp_path / "calib"
    shutil.copytree(Path(digits["source"]) / "train" / "0", narrow / "0")
    quantize(run, QuantizeSettings(max_drop=100.0, calib=str(narrow)))
    new = _write(tmp_path / "new", *held_out)
    result = shift(run, ShiftSettings(data=str(new), permutations=200))
    c = result.coverage
    assert c.reference == "calibration images" and c.verdict.startswith(NOT_COVERED), c.verdict
    assert c.uncovered >= 1 and c.val_uncovered >= 1  # val, of all five digits, overflows the ranges too
    worst = c.tensors[0]
    assert not worst.covered and worst.new > 0.001 and worst.calibration == 0.0  # minmax: the calib set fits
    assert f"--calib {new}" in c.command
    assert result.most_saturating and result.most_saturating[0].outside > 0


def test_unlabelled_folder_and_bad_input(quantized_run, held_out, tmp_path, capsys):
    from typer.testing import CliRunner

    from edgetl.cli import app, main

    images, labels = held_out
    flat = _write(tmp_path / "flat", images[::4], labels[::4], change=lambda a: 255 - a, labelled=False)
    res = CliRunner().invoke(app, ["shift", str(quantized_run), "--data", str(flat), "--permutations", "200"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # CliRunner's 80 columns wrap lines
    assert "25 unlabelled images against" in said and SHIFTED in said and "read as unlabelled" in said
    one = _write(tmp_path / "one", images[:1], labels[:1], labelled=False)
    single = shift(quantized_run, ShiftSettings(data=str(one)))
    assert single.features.mmd_p is None and single.features.verdict == LOOKS_LIKE  # one image: the rank test
    result = json.loads((Path(quantized_run) / "shift.json").read_text())
    assert result["labelled"] is False and result["accuracy"] is None
    for args, said in ([["--data", str(tmp_path / "missing")], "no such folder"],
                       [["--data", str(tmp_path / "empty")], "holds no images"],
                       [["--alpha", "2", "--data", str(flat)], "alpha"]):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as exited:
            main(["shift", str(quantized_run), *args])
        err = capsys.readouterr().err
        assert exited.value.code in (1, 2) and said in err and "Traceback" not in err, err


def test_statistics_on_hand_made_cases():
    from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

    from edgetl.shift.scores import Gaussian, fit_gaussian, mahalanobis, mmd_test

    rng = np.random.default_rng(0)
    g = Gaussian(means=np.array([[0.0, 0.0], [4.0, 0.0]]), precision=np.array([[1.0, 0.0], [0.0, 0.25]]),
                 center=np.zeros(2), scale=np.ones(2))
    x = np.array([[3.0, 2.0]])
    expected = min(scipy_mahalanobis(x[0], m, g.precision) for m in g.means)  # sqrt(1 + 1) to the second mean
    assert mahalanobis(x, g)[0] == pytest.approx(expected) == pytest.approx(np.sqrt(2))
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(100, 8))
    fitted = fit_gaussian(a, np.zeros(120, int), 1)
    assert mmd_test(a, b, fitted, 300, 0)[1] > 0.05
    assert mmd_test(a, b + 0.6, fitted, 300, 0)[1] < 0.01


def test_int8_ranges_read_from_the_graph():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.shift.activations import int8_ranges

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph)
    fp32 = helper.make_model(helper.make_graph(nodes[:1], "f", graph.input,
                                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1])]))
    (r,) = int8_ranges(model, fp32)
    assert (r.tensor, r.lo, r.hi) == ("r", -128.5 * 0.5, 127.5 * 0.5)
    onnx.checker.check_model(model)
