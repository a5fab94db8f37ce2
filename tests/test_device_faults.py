"""The device entry point, as a damaged or hostile bundle meets it (issue 24, items 4 and 9): every path it opens
is a hashed file inside the bundle, files the manifest does not list are reported by `verify`, and whatever
goes wrong ends in one `edgetl-device: error:` line and exit 2, the form `edgetl deploy` parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.ship.bundle import make_bundle
from edgetl.io import sha256_file


@pytest.fixture(scope="module")
def pristine(exported_copy):
    run = exported_copy("device-faults")
    return make_bundle(run, "fp32", max_images=8).path


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    dst = tmp_path / "b" / "fp32"
    shutil.copytree(pristine, dst)
    return dst


def device(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGETL_DEBUG"}
    return subprocess.run([sys.executable, str(bundle / "edgetl_device.py"), *args, "--dir", str(bundle)],
                          capture_output=True, text=True, timeout=300, env=env)


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(bundle: Path, rel: str) -> None:
    """Make the manifest agree with a file changed on purpose (an attacker who rewrote both)."""
    def change(m):
        m["files"][rel] = {"sha256": sha256_file(bundle / rel), "size": (bundle / rel).stat().st_size}
    edit_manifest(bundle, change)


def assert_one_line(res: subprocess.CompletedProcess, *fragments: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgetl-device: error: "), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_model_from_outside_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "b.onnx"
    shutil.copy(bundle / "model.onnx", outside)
    edit_manifest(bundle, lambda m: m["models"].update(fp32="../../b.onnx"))
    assert_one_line(device(bundle, "bench", "--backend", "onnxruntime", "--device", "cpu"),
                    "models['fp32'] = '../../b.onnx' is not one of the bundle's hashed files")


def test_a_listed_file_that_links_outside_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "model.onnx", outside)  # the same bytes: the hash alone would pass it
    (bundle / "model.onnx").unlink()
    os.symlink(outside, bundle / "model.onnx")
    assert_one_line(device(bundle, "verify"), "model.onnx leads outside the bundle")


def test_verify_reports_files_the_manifest_does_not_list(bundle):
    os.symlink("/etc", bundle / "etc")
    (bundle / "data" / "extra.bin").write_bytes(b"x")
    res = device(bundle, "verify")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["unlisted"] == ["data/extra.bin", "etc -> /etc"]


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m["files"].update({"model.onnx": "x"}), "files['model.onnx'] is not {'size': int, 'sha256': hex}"),
    (lambda m: m.update(models=[]), "models is not a table"),
    (lambda m: m["data"].update(inputs="nowhere.npy"), "data['inputs'] = 'nowhere.npy' is not one of the bundle's"),
    (lambda m: m.update(io={}), "io.input.shape is missing"),
], ids=["files-entry", "models", "data-path", "io"])
def test_a_malformed_manifest_is_one_line(bundle, change, fragment):
    edit_manifest(bundle, change)
    assert_one_line(device(bundle, "bench", "--backend", "onnxruntime", "--device", "cpu"), "malformed manifest",
                    fragment)


def test_a_model_that_is_not_onnx_is_one_line(bundle):
    (bundle / "model.onnx").write_bytes(b"not an onnx model at all")
    rehash(bundle, "model.onnx")
    assert_one_line(device(bundle, "bench", "--backend", "onnxruntime", "--device", "cpu"),
                    "model.onnx: onnxruntime cannot load it")


@pytest.mark.parametrize("inputs, fragment", [
    (np.array([{"a": 1}], dtype=object), "not a plain numpy array"),
    (np.zeros((8, 3, 5, 5), np.float32), "the model takes (N, 3, 32, 32)"),
], ids=["pickled", "wrong-shape"])
def test_bad_inputs_are_one_line(bundle, inputs, fragment):
    np.save(bundle / "data" / "inputs.npy", inputs, allow_pickle=True)
    rehash(bundle, "data/inputs.npy")
    assert_one_line(device(bundle, "bench", "--backend", "onnxruntime", "--device", "cpu"), fragment)


def test_an_unexpected_failure_is_still_one_line(bundle):
    """A bug or a damage nothing above foresaw: one line naming the exception, exit 2; EDGETL_DEBUG shows it."""
    edit_manifest(bundle, lambda m: m.update(precision=["fp32"]))
    res = device(bundle, "bench", "--backend", "onnxruntime", "--device", "cpu")
    assert_one_line(res, "unexpected TypeError in `bench`", "(EDGETL_DEBUG=1 shows where)")
