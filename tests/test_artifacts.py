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
    from edgetl.export import export

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
    code = f"from edgetl.export import export; export({str(run)!r})"
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
    from edgetl.export import export

    export(run)
    assert not left[0].exists()
    assert decoy.exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_temp_dir_is_private_and_named(tmp_path):
    d = make_tempdir(tmp_path, "export")
    assert d.name.startswith(".export.edgetl-") and d.name.endswith(".tmp") and _mode(d) == 0o700
