"""What edgetl leaves on disk: file modes that respect the umask, and no temporaries after a crash."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetl.io import atomic_path, make_tempdir, sweep_stale_temps, write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_writes_respect_the_umask(tmp_path, umask_022):
    write_json(tmp_path / "metrics.json", {"top1": 1.0})
    with atomic_path(tmp_path / "model.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "metrics.json") == 0o644
    assert _mode(tmp_path / "model.bin") == 0o644
    os.umask(0o077)
    write_json(tmp_path / "private.json", {})
    assert _mode(tmp_path / "private.json") == 0o600


def test_run_artifacts_are_world_readable_under_umask_022(exported_copy, umask_022, tmp_path):
    """metrics, safetensors (through finetune's writer), the ONNX graph and its report."""
    from edgetl.card import ModelCard
    from edgetl.finetune import save_weights
    from edgetl.models import load_trained

    run = exported_copy("umask")
    from edgetl.export.run import export

    export(run)
    model, card = load_trained(run)
    save_weights(tmp_path / "model.safetensors", model, card)
    for name in ("model.onnx", "export_report.json"):
        assert _mode(run / name) == 0o644, name
    assert _mode(tmp_path / "model.safetensors") == 0o644
    assert ModelCard.from_safetensors(tmp_path / "model.safetensors").model == card.model


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_swept_and_nothing_else(tmp_path):
    from edgetl import io

    dead = _dead_pid()
    now_ms = int(time.time() * 1000)
    stale_dir = tmp_path / f".export.edgetl-{io._HOST}-{dead}-{now_ms}-abc12345.tmp"
    stale_file = tmp_path / f".model.onnx.edgetl-{io._HOST}-{dead}-{now_ms}-zz9_xy.tmp"
    live = tmp_path / f".export.edgetl-{io._HOST}-{os.getpid()}-{now_ms}-live0001.tmp"
    other_host = tmp_path / f".export.edgetl-00000000-{dead}-{now_ms}-abc12345.tmp"
    not_ours = [tmp_path / ".export-abc123", tmp_path / "notes.tmp", tmp_path / f".x.edgetl-{io._HOST}-{dead}-1-a"]
    (stale_dir / "raw").mkdir(parents=True)
    (stale_dir / "raw" / "model.onnx").write_bytes(b"0" * 1000)
    stale_file.write_bytes(b"0")
    for p in (live, other_host, *not_ours):
        p.mkdir()
    if io._HOST == "00000000":
        pytest.skip("this host's hash collides with the test's 'other host'")
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert not stale_dir.exists() and not stale_file.exists()
    for p in (live, other_host, *not_ours):
        assert p.exists(), p


def test_export_temp_folder_left_by_sigkill_is_removed_by_the_next_export(exported_copy):
    run = exported_copy("killed")
    code = f"from edgetl.export.run import export; export({str(run)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 120
    left = []
    while time.time() < deadline and proc.poll() is None:
        left = [p for p in run.iterdir() if p.name.startswith(".export.edgetl-")]
        if left and any(left[0].rglob("*.onnx")):
            break
        time.sleep(0.05)
    assert left, "the export never created its temp folder"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left[0].exists()  # what SIGKILL leaves behind
    decoy = run / ".export-not-edgetl"
    decoy.mkdir()
    from edgetl.export.run import export

    export(run)
    assert not left[0].exists()
    assert decoy.exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_temp_dir_is_private_and_named(tmp_path):
    d = make_tempdir(tmp_path, "export")
    assert d.name.startswith(".export.edgetl-") and d.name.endswith(".tmp") and _mode(d) == 0o700


# -- recorded hashes, checked when a model is loaded -------------------------------------------------------
def _flip_in_largest_initializer(onnx_path: Path) -> str:
    """Flip one byte in the middle of the largest weight tensor (a conv weight) of an ONNX file, in place."""
    import onnx

    proto = onnx.load(str(onnx_path))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(onnx_path.read_bytes())
    at = data.find(init.raw_data[:256])
    assert at > 0
    data[at + len(init.raw_data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    return init.name


def _flip_in_safetensors(path: Path) -> None:
    import struct

    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0xFF  # inside the tensor bytes, not the header
    path.write_bytes(bytes(data))


def test_changed_onnx_is_refused_by_every_stage_that_loads_it(exported_copy):
    from edgetl.ship.bundle import make_bundle
    from edgetl.errors import ModelError
    from edgetl.evaluate.run import eval_run
    from edgetl.evaluate.settings import EvalSettings
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("tampered")
    before = eval_run(run, EvalSettings(backend="onnxruntime")).top1
    assert before > 0.5
    name = _flip_in_largest_initializer(run / "model.onnx")
    assert "conv" in name.lower() or "weight" in name.lower()
    for stage in (lambda: eval_run(run, EvalSettings(backend="onnxruntime")), lambda: quantize(run, QuantizeSettings(precision="fp16")),
                  lambda: make_bundle(run)):
        with pytest.raises(ModelError) as e:
            stage()
        assert e.value.message.startswith(f"{run / 'model.onnx'}: changed since it was written")
        assert "export_report.json recorded" in e.value.message and e.value.hint == f"re-run `edgetl export {run}`"
    assert not (run / "model.fp16.onnx").exists() and not (run / "bundles").exists()
    from edgetl.export.run import export

    export(run)  # what the hint says: the re-exported model loads again
    assert eval_run(run, EvalSettings(backend="onnxruntime")).top1 == before


def test_changed_quantized_graph_is_refused(exported_copy):
    from edgetl.errors import ModelError
    from edgetl.evaluate.run import eval_run
    from edgetl.evaluate.settings import EvalSettings
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("tampered-fp16")
    quantize(run, QuantizeSettings(precision="fp16"))
    assert eval_run(run, EvalSettings(backend="onnxruntime", precision="fp16")).top1 > 0.5
    _flip_in_largest_initializer(run / "model.fp16.onnx")
    with pytest.raises(ModelError, match=r"model\.fp16\.onnx: changed since .*quant_report\.json recorded") as e:
        eval_run(run, EvalSettings(backend="onnxruntime", precision="fp16"))
    assert e.value.hint == f"re-run `edgetl quantize {run} --precision fp16`"
    (run / "quant_report.json").write_text("{ not json")
    with pytest.raises(ModelError, match=r"quant_report\.json: unreadable"):
        eval_run(run, EvalSettings(backend="onnxruntime", precision="fp16"))
    assert eval_run(run, EvalSettings(backend="onnxruntime")).top1 > 0.5  # fp32 is recorded elsewhere: unaffected


def test_changed_safetensors_is_refused(run_copy):
    from edgetl.errors import ModelError
    from edgetl.evaluate.run import eval_run
    from edgetl.export.run import export

    _flip_in_safetensors(run_copy / "model.safetensors")
    for stage in (lambda: eval_run(run_copy), lambda: export(run_copy)):
        with pytest.raises(ModelError, match=r"model\.safetensors: its tensors changed since `edgetl finetune` wrote"):
            stage()
    assert not (run_copy / "model.onnx").exists()


def test_a_model_is_hashed_once_per_process(exported_copy, monkeypatch):
    from edgetl import integrity
    from edgetl.card import ModelCard

    run = exported_copy("hash-once")
    calls = []
    real = integrity.file_sha256.__globals__["_cached"]
    monkeypatch.setattr(integrity, "_cached", lambda path, compute: real(path, lambda: calls.append(path) or compute()))
    for _ in range(3):
        ModelCard.from_onnx(run / "model.onnx")
    assert calls == [run / "model.onnx"]


def test_garbage_model_onnx_is_one_line_in_bundle_and_deploy(exported_copy):
    """Bytes that are no ONNX at all: bundle (and deploy, through the same model_files) say so in one line."""
    from edgetl.ship.bundle import make_bundle, model_files
    from edgetl.errors import ModelError
    from edgetl.rundir import RunDir

    run = exported_copy("garbage")
    (run / "model.onnx").write_bytes(b"\x08\x07not an onnx file at all" * 100)
    for stage in (lambda: make_bundle(run), lambda: model_files(RunDir(run), "fp32")):
        with pytest.raises(ModelError, match="model.onnx: not a readable ONNX file"):
            stage()
    assert not (run / "bundles").exists()
