"""`edgetl bundle` and the device-side entry point, run locally (no ssh): what a device receives and runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgetl.ship.bundle import device_program, make_bundle, portable_files, write_tarball
from edgetl.errors import DeployError, RunDirError


@pytest.fixture(scope="module")
def exported_run(exported_copy):
    return exported_copy("digits")


@pytest.fixture(scope="module")
def bundle(exported_run):
    return make_bundle(exported_run, "fp32", max_images=40)


def _device(*args, cwd=None) -> subprocess.CompletedProcess:
    """The entry point as `edgetl deploy` runs it: the packed program (entry point + portable/) on stdin."""
    return subprocess.run([sys.executable, "-", *args], input=device_program().decode(), capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_bundle_contents(bundle, exported_run):
    from edgetl.card import ModelCard
    from edgetl.data import load_rgb, preprocess, read_splits

    m = bundle.manifest
    assert bundle.path == exported_run / "bundles" / "fp32"
    shipped = {f"portable/{p.name}" for p in portable_files()}
    assert {"portable/engines.py", "portable/manifest.py", "portable/rows.py"} <= shipped
    assert set(m["files"]) == {"model.onnx", "card.json", "data/inputs.npy", "data/labels.npy",
                               "edgetl_device.py"} | shipped
    for rel, entry in m["files"].items():
        data = (bundle.path / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert bundle.sha256 == hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest()
    assert (bundle.path / "model.onnx").read_bytes() == (exported_run / "model.onnx").read_bytes()
    card = ModelCard.from_onnx(exported_run / "model.onnx")
    assert json.loads((bundle.path / "card.json").read_text()) == card.model_dump(mode="json") == m["card"]
    assert m["io"]["input"]["name"] == "images" and m["io"]["output"]["name"] == "logits"
    assert m["io"]["input"]["shape"] == [None, 3, 32, 32] and m["io"]["input"]["dynamic_batch"]

    # the images are preprocessed per the card: the same arrays the host pipeline makes from the files
    x = np.load(bundle.path / "data/inputs.npy")
    y = np.load(bundle.path / "data/labels.npy")
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    _, val = read_splits(exported_run / "splits.json")
    assert set(y.tolist()) == set(range(len(card.class_names)))  # an even spread keeps every class
    first, last = preprocess(load_rgb(val.paths[0]), card), preprocess(load_rgb(val.paths[-1]), card)
    np.testing.assert_array_equal(x[0], first)
    np.testing.assert_array_equal(x[-1], last)
    assert y[0] == val.labels[0] and y[-1] == val.labels[-1]

    # the reference is fp32 PyTorch top-1 on exactly these arrays
    from edgetl.runtime import create_backend

    with create_backend("torch", exported_run / "model.safetensors") as be:
        top1 = float((be.infer(x).argmax(1) == y).mean())
    assert m["reference"] == {"backend": "torch", "precision": "fp32", "top1": pytest.approx(top1), "n": 40}
    assert m["reference"]["top1"] > 0.5  # the trained digits model is far above chance (0.2)


def test_bundle_is_deterministic_and_reused(bundle, exported_run, tmp_path):
    again = make_bundle(exported_run, "fp32", max_images=40)
    assert again.reused and again.sha256 == bundle.sha256
    elsewhere = make_bundle(exported_run, "fp32", out_dir=tmp_path / "b2", max_images=40)
    assert not elsewhere.reused and elsewhere.sha256 == bundle.sha256

    t1 = write_tarball(bundle.path, tmp_path / "a.tar.gz", "digits-fp32")
    t2 = write_tarball(elsewhere.path, tmp_path / "b.tar.gz", "digits-fp32")
    assert t1.read_bytes() == t2.read_bytes()
    with tarfile.open(t1) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and names[0] == "digits-fp32"
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        assert "digits-fp32/manifest.json" in names and "digits-fp32/data/inputs.npy" in names
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "unpacked", **extra)
    # unpacked on an offline device, the entry point verifies it from its own folder
    unpacked = tmp_path / "unpacked" / "digits-fp32"
    res = subprocess.run([sys.executable, str(unpacked / "edgetl_device.py"), "verify"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"] == len(bundle.manifest["files"])

    # a changed file is not reused: the bundle is rewritten
    (tmp_path / "b2" / "card.json").write_text("{}")
    redo = make_bundle(exported_run, "fp32", out_dir=tmp_path / "b2", max_images=40)
    assert not redo.reused and redo.sha256 == bundle.sha256
    # different settings, different bundle
    assert make_bundle(exported_run, "fp32", out_dir=tmp_path / "b3", max_images=20).sha256 != bundle.sha256


def test_cli_bundle_tarball(exported_run, tmp_path):
    from typer.testing import CliRunner

    from edgetl.cli import app

    out = tmp_path / "dist" / "digits.tar.gz"
    res = CliRunner().invoke(app, ["bundle", str(exported_run), "--out", str(out), "--max-images", "40"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "sha256" in res.output
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("digits-fp32/manifest.json"))
    assert manifest["precision"] == "fp32" and manifest["data"]["n"] == 40


def test_missing_precision_is_one_clear_line(exported_run):
    with pytest.raises(RunDirError) as err:
        make_bundle(exported_run, "int8")
    assert "model.int8.onnx" in err.value.message and "edgetl quantize" in err.value.hint
    res = subprocess.run([sys.executable, "-m", "edgetl.cli", "bundle", str(exported_run), "--precision", "int8"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "model.int8.onnx is missing" in res.stderr and "edgetl quantize" in res.stderr
    with pytest.raises(DeployError, match="precision int4: not one of"):
        make_bundle(exported_run, "int4")


def test_bundled_entry_point_runs_from_its_folder(bundle, tmp_path):
    """Unpacked on an offline device, `python3 edgetl_device.py` imports the portable/ next to it (and writes
    no __pycache__ into the verified bundle); without portable/ it says so in one line."""
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    res = subprocess.run([sys.executable, "-E", str(copy / "edgetl_device.py"), "verify"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"] == len(bundle.manifest["files"])
    assert not list(copy.rglob("__pycache__"))
    shutil.rmtree(copy / "portable")
    res = subprocess.run([sys.executable, "-E", str(copy / "edgetl_device.py"), "verify"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "portable/" in res.stderr


def test_device_without_numpy_gets_the_hint(bundle, tmp_path):
    """A device Python without numpy: `facts` still answers (numpy: null), bench says what to do."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    facts = subprocess.run([str(python), "-", "facts"], input=device_program(), capture_output=True, env=env, timeout=120)
    assert facts.returncode == 0, facts.stderr
    assert json.loads(facts.stdout)["numpy"] is None
    res = subprocess.run([str(python), "-", "bench", "--dir", str(bundle.path), "--backend", "onnxruntime"],
                         input=device_program(), capture_output=True, env=env, timeout=120)
    err = res.stderr.decode()
    assert res.returncode == 2 and "Traceback" not in err and "ModuleNotFoundError" not in err
    assert "numpy is not installed" in err and "--python PATH" in err


def test_device_verify_detects_tampering(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    ok = _device("verify", "--dir", str(copy))
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    labels = copy / "data" / "labels.npy"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1
    labels.write_bytes(bytes(data))
    bad = _device("verify", "--dir", str(copy))
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "data/labels.npy sha256 differs" in lines[0]
    labels.unlink()
    assert "data/labels.npy is missing" in _device("verify", "--dir", str(copy)).stderr
    # a manifest naming a file outside the bundle is refused
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "outside the bundle" in _device("verify", "--dir", str(copy)).stderr


def test_device_bench_onnxruntime_matches_host(bundle, exported_run):
    import onnxruntime as ort

    res = _device("bench", "--dir", str(bundle.path), "--backend", "onnxruntime", "--device", "cpu",
                  "--batch-sizes", "1,3", "--warmup", "1", "--iterations", "4")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    x = np.load(bundle.path / "data/inputs.npy")
    y = np.load(bundle.path / "data/labels.npy")
    sess = ort.InferenceSession(str(exported_run / "model.onnx"), providers=["CPUExecutionProvider"])
    top1 = float((sess.run(None, {"images": x})[0].argmax(1) == y).mean())
    assert [r["batch_size"] for r in doc["rows"]] == [1, 3]
    for r in doc["rows"]:
        assert r["top1"] == pytest.approx(top1, abs=1e-6) and r["iterations"] == 4 and r["n_images"] == 40
        assert r["top1_drop"] == pytest.approx(bundle.manifest["reference"]["top1"] - top1, abs=2e-6)
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert doc["bundle"]["bundle_sha256"] == bundle.sha256


def test_device_build_without_tensorrt_says_so(bundle):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the no-TensorRT message cannot be checked")
    except ImportError:
        pass
    if shutil.which("trtexec") or shutil.which("dpkg-query") and subprocess.run(
            ["dpkg-query", "-W", "tensorrt"], capture_output=True).returncode == 0:
        pytest.skip("TensorRT is installed here")
    res = _device("build", "--dir", str(bundle.path))
    assert res.returncode == 2 and "TensorRT is not installed" in res.stderr
    res = _device("bench", "--dir", str(bundle.path), "--backend", "tensorrt")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_device_facts_are_optional():
    res = _device("facts")
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    for key in ("model", "l4t", "jetpack", "tensorrt", "power_mode", "clocks", "gpu", "python", "numpy"):
        assert key in facts
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    if not Path("/etc/nv_tegra_release").exists():
        assert facts["l4t"] is None


def test_device_inventory(bundle, tmp_path):
    res = _device("inventory", str(bundle.path), str(tmp_path / "absent"))
    inv = json.loads(res.stdout)
    files = inv[str(bundle.path)]["files"]
    assert files["model.onnx"] == bundle.manifest["files"]["model.onnx"]
    assert inv[str(tmp_path / "absent")] == {"exists": False, "files": {}}


def test_engine_of_another_bundle_is_reused_only_when_it_matches(bundle, tmp_path):
    sys.path.insert(0, str(bundle.path))
    try:
        import edgetl_device as device
    finally:
        sys.path.remove(str(bundle.path))
        for name in [m for m in sys.modules if m == "edgetl_device" or m.split(".")[0] == "portable"]:
            del sys.modules[name]
    orin = {"library": "tensorrt", "library_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    run_dir = tmp_path / "pets"
    old = run_dir / "aaa"
    plan, sidecar = device.engine_paths(old, orin, "int8")
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine bytes")
    manifest = dict(bundle.manifest, models={"int8": "model.onnx"})
    device.write_sidecar(plan, manifest, "int8", orin, builder="trtexec", profile=device.profile_for(manifest["io"], 8),
                         build_seconds=1.0)
    onnx1 = manifest["files"]["model.onnx"]["sha256"]
    new_bundle = run_dir / "bbb"
    new_bundle.mkdir()
    find = device.find_sibling_engine
    folder = plan.parent.name
    assert folder == "orin-trt10.3.0"
    assert find(new_bundle, folder, "int8", onnx1, orin, 8) == (plan, sidecar)
    # any change of ONNX, TensorRT, GPU or a larger batch than the profile covers means a new build
    assert find(new_bundle, folder, "int8", "0" * 64, orin, 8) is None
    assert find(new_bundle, folder, "int8", onnx1, {**orin, "library_version": "10.4.0"}, 8) is None
    assert find(new_bundle, folder, "int8", onnx1, {**orin, "gpu_name": "Thor", "compute_capability": "11.0"}, 8) is None
    assert find(new_bundle, folder, "int8", onnx1, orin, 16) is None
    plan.write_bytes(b"tampered")  # an engine whose bytes no longer match its sidecar is never adopted
    assert find(new_bundle, folder, "int8", onnx1, orin, 8) is None
    plan.write_bytes(b"engine bytes")
    target = new_bundle / "engines" / folder
    device.adopt_engine((plan, sidecar), target / "model.int8.plan", target / "model.int8.json")
    assert (target / "model.int8.plan").read_bytes() == b"engine bytes"
    assert (target / "model.int8.json").read_bytes() == sidecar.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["model.int8.json", "model.int8.plan"]


def test_bundle_stage_settings_file_options_winning_and_result(exported_run, tmp_path):
    import yaml

    from edgetl.ship.bundle import BundleResult, BundleSettings, bundle
    from edgetl.cli import main

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bundles", "devices", "triton", "settings"))
    given = tmp_path / "bundle.yaml"
    given.write_text("max_images: 20\ntar: true\n")
    with pytest.raises(SystemExit) as done:
        main(["bundle", str(run), "--config", str(given)])
    assert done.value.code == 0
    tarball = run / "bundles" / "run-fp32.tar.gz"
    with tarfile.open(tarball) as tar:  # both settings from the file
        assert json.load(tar.extractfile("run-fp32/manifest.json"))["data"]["n"] == 20
    assert yaml.safe_load((run / "settings" / "bundle.yaml").read_text()) == {
        "precision": "fp32", "out": None, "tar": True, "max_images": 20}

    with pytest.raises(SystemExit) as done:
        main(["bundle", str(run), "--config", str(given), "--max-images", "30", "--no-tar"])
    assert done.value.code == 0
    manifest = json.loads((run / "bundles" / "fp32" / "manifest.json").read_text())
    assert manifest["data"]["n"] == 30  # the option given wins over the file's 20
    assert yaml.safe_load((run / "settings" / "bundle.yaml").read_text())["tar"] is False

    # the result is what the bundle holds: unchanged settings reuse it
    result = bundle(run, BundleSettings(max_images=30))
    assert isinstance(result, BundleResult) and result.reused and result.tarball is None
    assert result.files == {rel: e["size"] for rel, e in manifest["files"].items()}
    assert result.images == 30 and result.reference_top1 == manifest["reference"]["top1"]
    assert result.sha256 == hashlib.sha256((run / "bundles" / "fp32" / "manifest.json").read_bytes()).hexdigest()
