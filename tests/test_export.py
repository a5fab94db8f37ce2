"""edgetl export: parity with PyTorch on real digits images, the card in the graph, fused
preprocessing, batch axes, external data, and every failure leaving nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgetl.card import ModelCard
from edgetl.data import load_arrays, read_splits
from edgetl.errors import ExportError, ModelError, RunDirError
from edgetl.evaluate.run import eval_run
from edgetl.evaluate.settings import EvalSettings
from edgetl.export.run import export
from edgetl.export.settings import ExportSettings
from edgetl.io import read_json, sha256_file
from edgetl.models import load_trained
from edgetl.rundir import RunDir

MOBILE = "mobilenetv3_small_050"  # depthwise convolutions, trains in ~2 s at 32 px


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _val_arrays(run: Path, card: ModelCard, limit: int | None = None):
    _, val = read_splits(RunDir(run).splits)
    return load_arrays(val, card, limit)


def _torch_logits(run: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    model, card = load_trained(run)
    x, y = _val_arrays(run, card, limit)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy(), y


def _ort(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _scaled_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |delta logit| relative to each image's largest |logit| (absolute below 1): export's measure."""
    scale = np.maximum(1.0, np.abs(ref).max(axis=1, keepdims=True))
    return float((np.abs(got.astype(np.float64) - ref) / scale).max())


def _leftovers(run: Path) -> list[str]:
    return [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """A copy of the resnet18 run, exported once with the defaults. Read-only for the tests."""
    run = _copy(trained_run, tmp_path_factory.mktemp("exported") / "run")
    export(run)
    return run


@pytest.fixture(scope="module")
def mobile_run(train_run) -> Path:
    return train_run(MOBILE)


# -- parity, report, card ---------------------------------------------------------------------------
def test_resnet18_parity_and_report(exported):
    run = RunDir(exported)
    report = read_json(run.export_report)
    n_val = len(read_splits(run.splits)[1])
    p = report["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0
    assert 0.0 <= p["max_scaled_diff"] <= 1e-4
    assert p["max_abs_diff"] <= 1e-4 * max(1.0, p["max_abs_logit"])
    assert p["n_images"] == min(64, n_val)
    assert p["batch_sizes"] == [1, 32]  # a full chunk and a single image through the dynamic axis
    assert report["opset"] == 17 and report["dynamic_batch"] is True
    assert report["inputs"] == [{"name": "images", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
    assert report["outputs"] == [{"name": "logits", "dtype": "float", "shape": ["batch", 5]}]
    assert report["sha256"] == sha256_file(run.onnx)
    assert report["weights_sha256"] == sha256_file(run.weights)
    assert report["file_size_bytes"] == run.onnx.stat().st_size
    assert 0 < report["nodes_after_simplify"] <= report["nodes_before_simplify"]
    assert report["simplification"]["requested"] is True
    assert {"torch", "onnx", "onnxruntime", "timm"} <= set(report["versions"])
    assert report["seconds"]["total"] > 0
    assert report["external_data"] is None and not run.onnx.with_name("model.onnx.data").exists()
    assert _leftovers(exported) == []

    # Independent of the report: ORT on every val image against PyTorch.
    ref, labels = _torch_logits(exported)
    got = _ort(run.onnx).run(["logits"], {"images": _val_arrays(exported, ModelCard.from_onnx(run.onnx))[0]})[0]
    assert _scaled_diff(got, ref) <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    onnx.checker.check_model(str(run.onnx), full_check=True)


def test_parity_images_cover_every_class(trained_run):
    _, val = read_splits(RunDir(trained_run).splits)
    assert val.labels == sorted(val.labels)  # splits list images class by class: a prefix would miss classes
    for n in (1, 5, 7, len(val) - 1, len(val), len(val) + 3):
        picked = val.spread(n)
        want = min(n, len(val))
        assert len(picked) == want == len(set(picked.paths))
        assert picked.paths[0] == val.paths[0] and (want == 1 or picked.paths[-1] == val.paths[-1])
        if want >= len(val.classes):
            assert set(picked.labels) == set(range(len(val.classes)))


def test_card_round_trips(exported):
    run = RunDir(exported)
    from_onnx = ModelCard.from_onnx(run.onnx)
    assert from_onnx == ModelCard.from_safetensors(run.weights)
    assert from_onnx.input_format == "float32_nchw"
    assert from_onnx.weights_sha256 is not None


def test_dynamic_batch_runs_at_1_and_7(exported):
    run = RunDir(exported)
    ref, _ = _torch_logits(exported, limit=7)
    x, _ = _val_arrays(exported, ModelCard.from_onnx(run.onnx), limit=7)
    session = _ort(run.onnx)
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    one = session.run(None, {"images": x[:1]})[0]
    seven = session.run(None, {"images": x})[0]
    assert one.shape == (1, 5) and seven.shape == (7, 5)
    assert _scaled_diff(seven, ref) <= 1e-4
    assert _scaled_diff(one, seven[:1]) <= 1e-5


def test_mobile_net_with_depthwise_convolutions(mobile_run, tmp_path):
    run = RunDir(_copy(mobile_run, tmp_path / "run"))
    export(run.path)
    graph = onnx.load(str(run.onnx)).graph
    groups = [a.i for node in graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "group"]
    assert max(groups) > 1  # depthwise convolutions survived export and simplification
    p = read_json(run.export_report)["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["max_scaled_diff"] <= 1e-4
    ref, _ = _torch_logits(run.path)
    got = _ort(run.onnx).run(None, {"images": _val_arrays(run.path, ModelCard.from_onnx(run.onnx))[0]})[0]
    assert _scaled_diff(got, ref) <= 1e-4


def test_small_vit_exports_with_parity(train_run, tmp_path):
    # A fixed-size model: built at the training size, so no per-forward position-embedding resampling.
    run = RunDir(_copy(train_run("test_vit", epochs=1), tmp_path / "run"))
    export(run.path)
    ops = {node.op_type for node in onnx.load(str(run.onnx)).graph.node}
    assert "Softmax" in ops and "Resize" not in ops
    p = read_json(run.export_report)["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["max_scaled_diff"] <= 1e-4


def test_static_batch_fixes_the_batch_dimension(mobile_run, tmp_path):
    run = RunDir(_copy(mobile_run, tmp_path / "run"))
    export(run.path, ExportSettings(static_batch=4, parity_images=10))  # 10 images: the last batch of 4 is padded
    report = read_json(run.export_report)
    assert report["static_batch"] == 4 and report["dynamic_batch"] is False
    assert report["inputs"][0]["shape"] == [4, 3, 32, 32] and report["outputs"][0]["shape"] == [4, 5]
    assert report["parity"]["batch_sizes"] == [4] and report["parity"]["n_images"] == 10
    session = _ort(run.onnx)
    x, _ = _val_arrays(run.path, ModelCard.from_onnx(run.onnx), limit=4)
    assert session.run(None, {"images": x})[0].shape == (4, 5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"images": x[:1]})


def test_fuse_preprocess_gives_the_same_predictions(exported, tmp_path):
    plain = RunDir(exported)
    run = RunDir(_copy(exported, tmp_path / "run"))
    export(run.path, ExportSettings(fuse_preprocess=True))
    card = ModelCard.from_onnx(run.onnx)
    assert card.input_format == "uint8_nhwc"
    assert card.model_copy(update={"input_format": "float32_nchw"}) == ModelCard.from_safetensors(run.weights)
    session = _ort(run.onnx)
    inp = session.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape == ["batch", 32, 32, 3]
    assert read_json(run.export_report)["parity"]["max_scaled_diff"] <= 1e-4

    # Every val image: raw uint8 pixels into the fused graph, normalised floats into the plain graph.
    x_u8, labels = _val_arrays(run.path, card)
    x_f32, _ = _val_arrays(run.path, ModelCard.from_onnx(plain.onnx))
    assert x_u8.dtype == np.uint8 and x_u8.shape[1:] == (32, 32, 3)
    fused = session.run(None, {"images": x_u8})[0]
    reference = _ort(plain.onnx).run(None, {"images": x_f32})[0]
    assert (fused.argmax(1) == reference.argmax(1)).all()
    assert _scaled_diff(fused, reference) <= 1e-4
    # and `edgetl eval` on the fused graph (card says uint8) scores what torch scores
    assert eval_run(run.path, EvalSettings(backend="onnxruntime")).top1 == eval_run(run.path, EvalSettings(backend="torch")).top1
    # the backend says what the fused graph takes, before onnxruntime sees the wrong dtype
    from edgetl.errors import EdgetlError
    from edgetl.runtime import create_backend

    with create_backend("onnxruntime", run.onnx) as be:
        with pytest.raises(EdgetlError, match="input of dtype float32, the model takes uint8 NHWC pixels"):
            be.infer(x_u8.astype(np.float32))
        assert np.array_equal(be.infer(x_u8[:3]), fused[:3])


def test_eval_onnxruntime_equals_torch(exported):
    onnx_metrics = eval_run(exported, EvalSettings(backend="onnxruntime")).model_dump()
    torch_metrics = eval_run(exported, EvalSettings(backend="torch")).model_dump()
    assert onnx_metrics["n"] == torch_metrics["n"] == len(read_splits(RunDir(exported).splits)[1])
    assert onnx_metrics["top1"] == torch_metrics["top1"]
    assert onnx_metrics["confusion"] == torch_metrics["confusion"]
    assert onnx_metrics["model_file"].endswith("model.onnx")


def test_no_simplify_and_options(mobile_run, tmp_path):
    run = RunDir(_copy(mobile_run, tmp_path / "run"))
    export(run.path, ExportSettings(simplify=False, parity_images=8, opset=18))
    report = read_json(run.export_report)
    assert report["simplification"] == {"requested": False, "kept": False}
    assert report["nodes_before_simplify"] == report["nodes_after_simplify"]
    assert report["opset"] == 18
    assert max(o.version for o in onnx.load(str(run.onnx)).opset_import if o.domain in ("", "ai.onnx")) == 18
    assert report["parity"]["n_images"] == 8
    from edgetl.errors import EdgetlError
    from edgetl.stage import load_settings

    for kwargs, match in [({"opset": 8}, "'opset'.*reads opset 9 and newer"), ({"static_batch": 0}, "'static_batch'"),
                          ({"tolerance": -1.0}, "'tolerance'"), ({"tolerance": float("nan")}, "'tolerance'"),
                          ({"parity_images": 0}, "'parity_images'")]:
        with pytest.raises(EdgetlError, match=match):
            load_settings(ExportSettings, None, kwargs)


# -- external data -------------------------------------------------------------------------------------
def test_external_data_keeps_the_run_movable(mobile_run, tmp_path):
    run = RunDir(_copy(mobile_run, tmp_path / "a" / "run"))
    export(run.path, ExportSettings(external_data_threshold=0, parity_images=16))  # as if the model were over 2 GB
    data = run.onnx.with_name("model.onnx.data")
    report = read_json(run.export_report)
    assert data.exists() and report["external_data"] == "model.onnx.data"
    assert run.onnx.stat().st_size < 200_000 < data.stat().st_size
    assert report["file_size_bytes"] == run.onnx.stat().st_size + data.stat().st_size
    assert report["external_data_sha256"] == sha256_file(data)
    header = onnx.load(str(run.onnx), load_external_data=False)
    locations = {e.value for t in header.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}  # relative: the folder can move

    moved = RunDir(shutil.move(str(run.path), str(tmp_path / "b" / "moved")))
    ref, _ = _torch_logits(moved.path, limit=8)
    x, _ = _val_arrays(moved.path, ModelCard.from_onnx(moved.onnx), limit=8)
    assert _scaled_diff(_ort(moved.onnx).run(None, {"images": x})[0], ref) <= 1e-4
    assert eval_run(moved.path, EvalSettings(backend="onnxruntime")).top1 == eval_run(moved.path, EvalSettings(backend="torch")).top1

    export(moved.path, ExportSettings(parity_images=8))  # small again: weights back inside, the stale data file goes
    assert not moved.onnx.with_name("model.onnx.data").exists()
    assert read_json(moved.export_report)["external_data"] is None


# -- failures ----------------------------------------------------------------------------------------
def test_failed_parity_writes_nothing(trained_run, tmp_path):
    run = RunDir(_copy(trained_run, tmp_path / "run"))
    run.onnx.unlink(missing_ok=True)
    # tolerance 0: ORT and PyTorch differ in the last bits of float32 (resnet18: ~1e-7), so this must fail
    with pytest.raises(ExportError, match=r"max \|delta logit\|") as e:
        export(run.path, ExportSettings(tolerance=0.0, parity_images=16))
    assert "model.onnx not written" in e.value.message
    assert not run.onnx.exists() and not run.export_report.exists() and _leftovers(run.path) == []


def test_failed_export_keeps_the_previous_model(exported, tmp_path, monkeypatch):
    run = RunDir(_copy(exported, tmp_path / "run"))
    before, report_before = run.onnx.read_bytes(), run.export_report.read_bytes()

    class FlippedSession(ort.InferenceSession):
        """A runtime that returns negated logits: top-1 disagrees with PyTorch on every image."""

        def run(self, *args, **kwargs):
            return [-o for o in super().run(*args, **kwargs)]

    monkeypatch.setattr(ort, "InferenceSession", FlippedSession)
    with pytest.raises(ExportError, match="top-1 agreement 0.00%"):
        export(run.path, ExportSettings(parity_images=16, fuse_preprocess=True))
    assert run.onnx.read_bytes() == before and run.export_report.read_bytes() == report_before
    assert _leftovers(run.path) == []


def test_missing_checkpoint_and_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        export(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="model.safetensors is missing"):
        export(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_checkpoint_of_a_model_timm_does_not_know(trained_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = RunDir(_copy(trained_run, tmp_path / "run"))
    with safe_open(str(run.weights), framework="pt") as f:
        meta = dict(f.metadata())
    card = ModelCard.from_json(meta["edgetl.card"]).model_copy(update={"model": "no_such_net_v9"})
    save_file(load_file(str(run.weights)), str(run.weights), metadata={**meta, "edgetl.card": card.to_json()})
    with pytest.raises(ModelError, match="no_such_net_v9"):
        export(run.path)
    assert not run.onnx.exists() and _leftovers(run.path) == []


def test_operator_the_exporter_cannot_handle(trained_run, tmp_path, monkeypatch):
    import edgetl.export.run as ex

    run = RunDir(_copy(trained_run, tmp_path / "run"))
    model, card = load_trained(run.weights)

    class WithLgamma(torch.nn.Module):
        """The real model plus aten::lgamma, which has no ONNX conversion."""

        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return torch.lgamma(self.net(x).abs() + 1)

    monkeypatch.setattr(ex, "load_trained", lambda _: (WithLgamma().eval(), card))
    with pytest.raises(ExportError, match="cannot convert operator 'aten::lgamma'"):
        export(run.path, ExportSettings(parity_images=4))
    assert not run.onnx.exists() and _leftovers(run.path) == []


def _edgetl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_corrupted_model_is_refused(exported, tmp_path):
    run = RunDir(_copy(exported, tmp_path / "run"))
    data = run.onnx.read_bytes()
    run.onnx.write_bytes(data[: len(data) // 2])  # truncated mid-weights, as by an interrupted copy
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        ModelCard.from_onnx(run.onnx)
    result = _edgetl("eval", str(run.path), "--backend", "onnxruntime")
    assert result.returncode == 1
    assert "model.onnx" in result.stderr and "not a readable ONNX file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    run.onnx.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError):
        ModelCard.from_onnx(run.onnx)


def test_cli_export_end_to_end(trained_run, tmp_path):
    run = RunDir(_copy(trained_run, tmp_path / "run"))
    run.onnx.unlink(missing_ok=True)
    result = _edgetl("export", str(run.path), "--parity-images", "16", "--static-batch", "8")
    assert result.returncode == 0, result.stderr
    assert "parity" in result.stdout and "pass" in result.stdout and "[8, 3, 32, 32]" in result.stdout
    report = read_json(run.export_report)
    assert report["parity"]["passed"] and report["static_batch"] == 8
    assert report["sha256"] == sha256_file(run.onnx)

    from typer.testing import CliRunner

    from edgetl.cli import app

    missing = CliRunner().invoke(app, ["export", str(tmp_path / "missing-run")])
    assert isinstance(missing.exception, RunDirError) and "no such run directory" in missing.exception.message

    failed = _edgetl("export", str(run.path), "--tolerance", "0", "--parity-images", "8")
    assert failed.returncode == 1 and "differs from PyTorch" in failed.stderr and "Traceback" not in failed.stderr
    assert sha256_file(run.onnx) == report["sha256"]  # the good export from above is untouched


def test_cli_config_is_used_the_command_line_wins_and_settings_are_recorded(trained_run, tmp_path):
    from typer.testing import CliRunner

    import yaml

    from edgetl.cli import app

    run = RunDir(_copy(trained_run, tmp_path / "run"))
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"parity_images": 4, "simplify": False, "opset": 18}))
    res = CliRunner().invoke(app, ["export", str(run.path), "--config", str(config), "--parity-images", "6"])
    assert res.exit_code == 0, res.output
    report = read_json(run.export_report)
    assert report["parity"]["n_images"] == 6 and report["opset"] == 18  # the CLI won; the YAML gave the rest
    assert report["simplification"] == {"requested": False, "kept": False}
    saved = yaml.safe_load(run.settings_file("export").read_text())
    assert saved["parity_images"] == 6 and saved["simplify"] is False and saved["opset"] == 18
    assert "parity" in res.output and "pass" in res.output
    from edgetl.export.run import ExportResult

    assert ExportResult.read(run.export_report).sha256 == sha256_file(run.onnx)


def test_static_batch_parity_runs_through_the_backend_with_padding(mobile_run, tmp_path):
    """7 images on a static batch of 4: two runs of 4 (the second padded), 7 rows compared."""
    run = RunDir(_copy(mobile_run, tmp_path / "run"))
    result = export(run.path, ExportSettings(static_batch=4, parity_images=7, simplify=False))
    assert result.parity["batch_sizes"] == [4] and result.parity["n_images"] == 7 and result.parity["passed"]
    assert result.model_dump(mode="json") == read_json(run.export_report)
