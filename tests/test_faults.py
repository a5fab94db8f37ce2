"""Bad input, table-driven, across every command (issue 14): each case gets its exit code and one or two lines,
never a traceback, and leaves the run, the data and every other folder exactly as they were.

Usage errors (exit 2) run through the real `edgetl` console script; errors the library finds (exit 1) run
through the same `cli.main` in this process, so torch is imported once for the whole table.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def edgetl_command() -> list[str]:
    """The console script of this interpreter's environment (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "edgetl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("edgetl")
    return [found] if found else [sys.executable, "-m", "edgetl"]


def run_script(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               COLUMNS="200")
    return subprocess.run([*edgetl_command(), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, **kwargs)


def tree_digest(path: Path) -> str:
    """Every name, type and byte under `path` (hidden files too); '' when it does not exist."""
    if not path.exists():
        return ""
    h = hashlib.sha256()
    for p in sorted([path, *path.rglob("*")]):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
        h.update(b"d" if p.is_dir() else b"f")
    return h.hexdigest()


# (id, arguments, exit code, text the first line holds). {run}: an exported run; {data}: the digits;
# {file}: a file inside the run; {dir}: an empty folder; {thesis}: a folder holding thesis.tex;
# {missing}: a path that does not exist; {new}: a fresh --out that must still not exist afterwards.
USAGE = [
    ("misspelt-command", ["exprot", "{run}"], 2, "No such command 'exprot'"),
    ("no-command-args", ["eval"], 2, "Missing argument"),
    ("missing-argument", ["export"], 2, "Missing argument"),
    ("unknown-option", ["export", "{run}", "--bogus"], 2, "--bogus"),
    ("option-without-value", ["eval", "{run}", "--device"], 2, "requires an argument"),
    ("finetune-no-out", ["finetune", "{data}"], 2, "Missing option"),
    ("finetune-epochs-abc", ["finetune", "{data}", "--out", "{new}", "--epochs", "abc"], 2, "--epochs"),
    ("finetune-out-file", ["finetune", "{data}", "--out", "{file}"], 2, "is a file"),
    ("finetune-img-size-huge", ["finetune", "{data}", "--out", "{new}", "--img-size", "100000"], 2, "--img-size"),
    ("finetune-img-size-tiny", ["finetune", "{data}", "--out", "{new}", "--img-size", "4"], 2, "--img-size"),
    ("finetune-bad-strategy", ["finetune", "{data}", "--out", "{new}", "--strategy", "bogus"], 2, "--strategy"),
    ("finetune-bad-dist-backend", ["finetune", "{data}", "--out", "{new}", "--dist-backend", "mpi"], 2,
     "--dist-backend"),
    ("eval-batch-size-0", ["eval", "{run}", "--batch-size", "0"], 2, "--batch-size"),
    ("shift-batch-size-0", ["shift", "{run}", "--data", "{data}", "--batch-size", "0"], 2, "--batch-size"),
    ("eval-json-dir", ["eval", "{run}", "--json", "{dir}"], 2, "is a directory"),
    ("export-opset-float", ["export", "{run}", "--opset", "1.5"], 2, "--opset"),
    ("quantize-calib-size-word", ["quantize", "{run}", "--calib-size", "many"], 2, "--calib-size"),
    ("quantize-precision-int4", ["quantize", "{run}", "--precision", "int4"], 2, "--precision"),
    ("eval-bad-backend", ["eval", "{run}", "--backend", "tpu"], 2, "--backend"),
    ("bench-bad-device", ["bench", "{run}", "--device", "tpu"], 2, "--device"),
    ("quantize-method-bogus", ["quantize", "{run}", "--method", "bogus"], 2, "--method"),
    ("build-workspace-word", ["build", "{run}", "--workspace", "lots"], 2, "--workspace"),
    ("build-bad-target", ["build", "{run}", "--target", "jetson"], 2, "--target"),
    ("bench-threads-negative", ["bench", "{run}", "--threads", "-1"], 2, "--threads"),
    ("bench-duration-nan", ["bench", "{run}", "--duration", "nan"], 2, "--duration"),
    ("bench-duration-negative", ["bench", "{run}", "--duration", "-2"], 2, "--duration"),
    ("bench-limit-0", ["bench", "{run}", "--limit", "0"], 2, "--limit"),
    ("bench-iterations-0", ["bench", "{run}", "--iterations", "0"], 2, "--iterations"),
    ("bundle-out-dir", ["bundle", "{run}", "--out", "{dir}"], 2, "is a directory"),
    ("deploy-no-host", ["deploy", "{run}"], 2, "Missing option"),
    ("triton-out-file", ["triton", "{run}", "--out", "{file}"], 2, "is a file"),
    ("triton-bad-kind", ["triton", "{run}", "--kind", "tpu"], 2, "--kind"),
    ("bundle-precision-int4", ["bundle", "{run}", "--precision", "int4"], 2, "--precision"),
    ("demo-img-size-huge", ["demo", "--out", "{new}", "--img-size", "100000"], 2, "--img-size"),
    ("demo-epochs-word", ["demo", "--out", "{new}", "--epochs", "ten"], 2, "--epochs"),
    ("finetune-seed-negative", ["finetune", "{data}", "--out", "{new}", "--seed", "-1"], 2, "--seed"),
    ("finetune-dist-timeout-inf", ["finetune", "{data}", "--out", "{new}", "--dist-timeout", "inf"], 2,
     "--dist-timeout"),
    ("quantize-seed-negative", ["quantize", "{run}", "--seed", "-1"], 2, "--seed"),
    ("deploy-jobs-huge", ["deploy", "{run}", "--host", "a@b", "--jobs", "100000"], 2, "--jobs"),
]

LIBRARY = [
    ("finetune-missing-data", ["finetune", "{missing}", "--out", "{new}"], 1, "{missing}"),
    ("finetune-out-is-data", ["finetune", "{data}", "--out", "{data}", "--overwrite"], 1, "is the data set itself"),
    ("finetune-out-inside-data", ["finetune", "{data}", "--out", "{data}/train/0/run", "--overwrite"], 1,
     "inside the data set"),
    ("finetune-out-holds-data", ["finetune", "{data}", "--out", "{data}/..", "--overwrite"], 1, "holds the data set"),
    ("finetune-out-thesis", ["finetune", "{data}", "--out", "{thesis}", "--overwrite"], 1, "not an edgetl run"),
    ("finetune-out-thesis-no-overwrite", ["finetune", "{data}", "--out", "{thesis}"], 1, "exists and is not empty"),
    ("finetune-existing-run", ["finetune", "{data}", "--out", "{run}"], 1, "exists and is not empty"),
    ("finetune-overwrite-typo-data", ["finetune", "{missing}", "--out", "{run}", "--overwrite"], 1, "{missing}"),
    ("finetune-missing-config", ["finetune", "{data}", "--out", "{new}", "--config", "{missing}"], 1,
     "cannot read settings"),
    ("finetune-resume-nothing", ["finetune", "{data}", "--out", "{new}", "--resume"], 1, "to resume from"),
    ("eval-no-run", ["eval", "{missing}"], 1, "no such run directory"),
        ("eval-no-int8-model", ["eval", "{run}", "--backend", "onnxruntime", "--precision", "int8"], 1,
     "model.int8.onnx"),
    ("eval-missing-data", ["eval", "{run}", "--data", "{missing}"], 1, "{missing}"),
    ("shift-missing-data", ["shift", "{run}", "--data", "{missing}"], 1, "{missing}"),
    ("export-old-opset", ["export", "{run}", "--opset", "5"], 1, "opset 5"),
    ("export-static-batch-0", ["export", "{run}", "--static-batch", "0"], 1, "setting 'static_batch'"),
    ("export-tolerance-nan", ["export", "{run}", "--tolerance", "nan"], 1, "setting 'tolerance'"),
    ("quantize-calib-size-0", ["quantize", "{run}", "--calib-size", "0"], 1, "calib_size"),
    ("build-opt-level-9", ["build", "{run}", "--opt-level", "9"], 1, "setting 'opt_level'"),
    ("build-batch-0", ["build", "{run}", "--batch", "0"], 1, "setting 'batch'"),
    ("build-missing-config", ["build", "{run}", "--config", "{missing}"], 1, "cannot read settings"),
    ("build-no-int8-model", ["build", "{run}", "--precision", "int8"], 1, "model.int8.onnx"),
    ("bench-bad-backend", ["bench", "{run}", "--backends", "tpu"], 1, "'tpu'"),
    ("bench-batch-sizes-0", ["bench", "{run}", "--batch-sizes", "0"], 1, "setting 'batch_sizes'"),
        ("bundle-out-zip", ["bundle", "{run}", "--out", "{dir}/x.zip"], 1, "give a .tar.gz file name"),
    ("bundle-no-int8-model", ["bundle", "{run}", "--precision", "int8"], 1, "model.int8.onnx"),
    ("bundle-max-images-0", ["bundle", "{run}", "--max-images", "0"], 1, "setting 'max_images'"),
    ("bundle-config-of-another-stage", ["bundle", "{run}", "--config", "{file}"], 1, "Extra inputs are not permitted"),
    ("deploy-bad-host", ["deploy", "{run}", "--host", "-oProxyCommand=false"], 1, "host '-oProxyCommand=false'"),
    ("deploy-no-fp16-model", ["deploy", "{run}", "--host", "nvidia@orin.local", "--precision", "fp16"], 1,
     "model.fp16.onnx"),
    ("triton-max-batch-0", ["triton", "{run}", "--max-batch", "0"], 1, "setting 'max_batch'"),
    ("triton-no-fp16-model", ["triton", "{run}", "--precision", "fp16"], 1, "model.fp16.onnx"),
]


@pytest.fixture(scope="module")
def places(exported_copy, digits, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    thesis = root / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}\n")
    (root / "empty").mkdir()
    data = root / "data"
    shutil.copytree(digits["source"], data)  # a private copy: some cases point --out at it
    run = exported_copy("faults-run")
    return {"run": run, "data": data, "file": run / "config.yaml", "dir": root / "empty", "thesis": thesis,
            "missing": root / "missing", "new": root / "new-run"}


@pytest.fixture(scope="module")
def digests(places) -> dict[str, str]:
    return {k: tree_digest(places[k]) for k in ("run", "data", "dir", "thesis")}


def _fill(args: list[str], places: dict[str, Path]) -> list[str]:
    return [a.format(**places) for a in args]


def _check(code: int, out: str, err: str, expected_code: int, expected: str, places, digests) -> None:
    assert code == expected_code, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("error: "), err
    assert expected.format(**places) in lines[0], err
    for key, digest in digests.items():
        assert tree_digest(places[key]) == digest, f"{key} changed"
    assert not places["new"].exists() and not places["missing"].exists()
    leftovers = [p.name for p in places["run"].parent.iterdir() if ".edgetl-" in p.name]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("args,code,expected", [c[1:] for c in USAGE], ids=[c[0] for c in USAGE])
def test_usage_errors_through_the_console_script(args, code, expected, places, digests):
    res = run_script(*_fill(args, places))
    _check(res.returncode, res.stdout, res.stderr, code, expected, places, digests)
    assert "Usage: edgetl" in res.stderr.splitlines()[1]


@pytest.mark.parametrize("args,code,expected", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_bad_values_found_by_the_library(args, code, expected, places, digests, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_fill(args, places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, code, expected, places, digests)


def test_the_table_covers_every_command():
    from edgetl.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    used = {args[0] for _, args, _, _ in USAGE + LIBRARY}
    assert commands <= used, commands - used
    assert len(USAGE) + len(LIBRARY) >= 40


# --- finetune --overwrite: the old run goes only once the new one is complete -----------------------------
def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(trained_run, digits, tmp_path):
    from edgetl.finetune import finetune
    from edgetl.rundir import pending_dir
    from tests.conftest import Recorder, tiny_config

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = tree_digest(out)

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    cfg = tiny_config(digits["source"], epochs=2, batch_size=64)
    with pytest.raises(Stop):
        finetune(out, cfg, Recorder(stop), overwrite=True)
    assert tree_digest(out) == before  # the failed replacement deleted nothing
    pending = pending_dir(out)
    assert (pending / "last_checkpoint.pt").exists()

    finetune(out, tiny_config(digits["source"]), resume=True)  # continues the pending replacement
    assert not pending.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no old or pending folder left beside it
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2  # the new run's, not the old one's 5
    assert (out / "train_log.csv").read_text().count("\n") == 3


def test_overwrite_refuses_a_run_holding_other_files(trained_run, digits, tmp_path):
    from edgetl.errors import RunDirError
    from edgetl.finetune import finetune
    from tests.conftest import tiny_config

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / "notes.md").write_text("mine\n")
    before = tree_digest(out)
    with pytest.raises(RunDirError, match=r"edgetl did not write \(notes.md\)"):
        finetune(out, tiny_config(digits["source"]), overwrite=True)
    assert tree_digest(out) == before


# --- issue 24: one writer per run (RUN/.edgetl.lock) ------------------------------------------------------
@pytest.mark.parametrize("args", [["finetune", "{data}", "--out", "{run}", "--overwrite", "--model", "test_resnet",
                                   "--img-size", "32", "--workers", "0", "--no-pretrained", "--device", "cpu",
                                   "--epochs", "1"],
                                  ["export", "{run}"], ["quantize", "{run}"], ["triton", "{run}"]],
                         ids=["finetune-overwrite", "export", "quantize", "triton"])
def test_a_second_writer_of_a_run_is_refused_naming_the_first(args, places, digests, capsys):
    """flock locks one open file, so a lock this process holds refuses the command as another process's would."""
    from edgetl.rundir import RunDir, lock_run, pending_dir

    with lock_run(places["run"], "quantize"):
        with pytest.raises(SystemExit) as exit_:
            main(_fill(args, places))
        assert RunDir(places["run"]).lock.exists()
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "edgetl quantize (pid", places, digests)
    assert f"pid {os.getpid()} on" in captured.err and "is writing this run now" in captured.err
    assert not RunDir(places["run"]).lock.exists()  # removed when the holder ended
    assert not pending_dir(places["run"]).exists()


def test_the_lock_follows_a_run_swapped_in_by_overwrite(tmp_path):
    """A lock file left in the old folder by the swap is not the new run's: the next writer locks afresh, and
    the old holder's exit removes nothing of the new holder's."""
    from edgetl.rundir import RunDir, lock_run, replace_dir

    run, new = tmp_path / "run", tmp_path / "new"
    run.mkdir(), new.mkdir()
    with lock_run(run, "finetune"):
        replace_dir(new, run)
        with lock_run(run, "export"):
            pass  # not refused: the lock held is the old folder's
        with lock_run(run, "export"):
            inner = RunDir(run).lock.read_text()
    assert inner.startswith("edgetl export") and not RunDir(run).lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- issue 24: triton replaces only model folders it wrote ------------------------------------------------
@pytest.mark.parametrize("mine", [{"config.pbtxt": "name: \"mine\"\n"},
                                  {"1/model.onnx": "my model"},
                                  {"config.pbtxt": None, "notes.txt": "mine"}],
                         ids=["user-config", "user-model-no-config", "edgetl-config-plus-user-file"])
def test_triton_refuses_a_model_folder_it_did_not_write(mine, places, exported_copy, tmp_path, capsys):
    run = exported_copy("triton-run")  # triton records its settings in the run: not the table's shared run
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as first:
        main(["triton", str(run), "--out", str(repo), "--name", "m"])
    assert first.value.code == 0
    with pytest.raises(SystemExit) as again:  # a repository edgetl wrote is refreshed
        main(["triton", str(run), "--out", str(repo), "--name", "m"])
    assert again.value.code == 0
    folder = repo / "m"
    if mine.get("config.pbtxt") or "1/model.onnx" in mine:  # a folder of the user's own
        shutil.rmtree(folder)
        folder.mkdir()
    for name, text in mine.items():
        if text is not None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    capsys.readouterr()
    before = tree_digest(repo)
    with pytest.raises(SystemExit) as exit_:
        main(["triton", str(run), "--out", str(repo), "--name", "m"])
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "so triton will not replace it", places, {})
    assert str(folder) in captured.err and tree_digest(repo) == before


# --- issue 24: a diverged run stops at once, keeping its last good epoch ------------------------------------
FT = ["--model", "test_resnet", "--img-size", "32", "--workers", "0", "--no-pretrained", "--device", "cpu",
      "--batch-size", "16"]


def test_lr_inf_is_refused_by_the_settings(places, digests, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_fill(["finetune", "{data}", "--out", "{new}", *FT, "--lr", "inf"], places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "setting 'lr'", places, digests)


def test_a_diverging_run_stops_in_its_first_epoch_and_keeps_nothing(places, digests, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_fill(["finetune", "{data}", "--out", "{new}", *FT, "--epochs", "3", "--lr", "1e8", "--check", "none"],
                   places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "training diverged at epoch 1", places, digests)
    assert "nothing is kept" in captured.err and "try 1e+07" in captured.err


def test_a_run_diverging_later_keeps_its_last_good_checkpoint(places, digests, tmp_path, monkeypatch, capsys):
    """The loss turns nan in epoch 2 (injected): the run stops there, with epoch 1's checkpoint and weights."""
    import math

    import edgetl.finetune.loop as loop

    real, calls = loop.train_one_epoch, []

    def diverging(*args, **kwargs):
        stats = real(*args, **kwargs)
        calls.append(1)
        return {**stats, "loss": math.nan, "first_nonfinite_step": 2} if len(calls) == 2 else stats

    monkeypatch.setattr(loop, "train_one_epoch", diverging)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(_fill(["finetune", "{data}", "--out", str(out), *FT, "--epochs", "3", "--check", "none"], places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "training diverged at epoch 2, step 3", places, digests)
    assert f"{out} keeps epoch 1's checkpoint" in captured.err
    import torch

    state = torch.load(out / "last_checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert (out / "train_log.csv").read_text().count("\n") == 2  # the header and epoch 1


# --- issue 24: settings files are read within bounds, and hold the same ranges as the options --------------
def _alias_bomb() -> str:
    lines, previous = ['a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]'], "a"
    for name in "bcdefghi":  # 9**9 items once expanded, from 340 bytes
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
        previous = name
    return "\n".join(lines) + f"\nbatch_sizes: *{previous}\n"


SETTINGS_FILES = [
    ("alias-bomb", "bench", _alias_bomb(), "aliases expanded"),
    ("nested-20000", "bench", "batch_sizes: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than 50"),
    ("dev-zero", "bench", None, "larger than 1 MiB"),
    ("finetune-img-size-8", "finetune", "img_size: 8\n", "setting 'img_size'"),
    ("finetune-seed-negative", "finetune", "seed: -1\n", "setting 'seed'"),
    ("finetune-dist-timeout-inf", "finetune", "dist_timeout: .inf\n", "setting 'dist_timeout'"),
    ("finetune-lr-nan", "finetune", "lr: .nan\n", "setting 'lr'"),
    ("deploy-jobs-huge", "deploy", "jobs: 100000\n", "setting 'jobs'"),
    ("quantize-seed-negative", "quantize", "seed: -1\n", "setting 'seed'"),
]


@pytest.mark.parametrize("command,text,expected", [c[1:] for c in SETTINGS_FILES], ids=[c[0] for c in SETTINGS_FILES])
def test_settings_files_within_bounds(command, text, expected, places, digests, tmp_path, capsys):
    import time

    config = Path("/dev/zero") if text is None else tmp_path / "settings.yaml"
    if text is not None:
        config.write_text(text)
    args = {"bench": ["bench", "{run}"], "finetune": ["finetune", "{data}", "--out", "{new}"],
            "deploy": ["deploy", "{run}", "--host", "a@b"], "quantize": ["quantize", "{run}"]}[command]
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        main(_fill(args, places) + ["--config", str(config)])
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, expected, places, digests)
    assert time.monotonic() - started < 10  # refused, not worked through


# --- issue 24: a full disk or a read-only run is one line, and leaves nothing half-written ------------------
def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_triton_leaves_no_truncated_model(places, digests, tmp_path, monkeypatch, capsys):
    import edgetl.ship.triton

    def copy_half(src, dst):  # what a full disk does: part of the file, then ENOSPC
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        _no_space()

    monkeypatch.setattr(edgetl.ship.triton.shutil, "copyfile", copy_half)
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as exit_:
        main(["triton", str(places["run"]), "--out", str(repo), "--name", "m"])
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, f"{repo / 'm' / '1'}: cannot write model.onnx (No space",
           places, digests)
    assert [p for p in repo.rglob("*") if p.is_file()] == []


def test_a_full_disk_during_export_names_the_run(places, digests, monkeypatch, capsys):
    """Export builds in a private folder inside the run: a full disk there is the run's, said in one line."""
    import edgetl.export.run

    monkeypatch.setattr(edgetl.export.run, "_save", _no_space)
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(places["run"])])
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "{run}: cannot write model.onnx (No space", places,
           digests)


def test_a_full_disk_while_finetune_saves_is_one_line(places, digests, monkeypatch, capsys):
    """torch.save says a full disk in words (RuntimeError "file write failed"), safetensors too: one line."""
    import torch

    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as exit_:
        main(_fill(["finetune", "{data}", "--out", "{new}", *FT, "--epochs", "1", "--check", "none"], places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "cannot write last_checkpoint.pt (", places, digests)
    assert "file write failed" in captured.err  # the first epoch never finished: {new} is gone (checked above)


def test_a_read_only_run_is_refused_before_bench_measures(places, digests, monkeypatch, capsys):
    """Root ignores permissions, so the read-only mount is simulated where edgetl first writes: the run lock."""
    import errno

    import edgetl.bench
    import edgetl.rundir

    def read_only(lock, *args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(lock))

    measured = []
    monkeypatch.setattr(edgetl.rundir, "_acquire", read_only)
    monkeypatch.setattr(edgetl.bench, "bench", lambda *a, **k: measured.append(1))
    with pytest.raises(SystemExit) as exit_:
        main(_fill(["bench", "{run}", "--backends", "torch"], places))
    captured = capsys.readouterr()
    _check(exit_.value.code, captured.out, captured.err, 1, "{run}: cannot write in the run folder (Read-only",
           places, digests)
    assert measured == []


def test_a_path_holding_a_line_break_stays_one_line(tmp_path, capsys):
    odd = tmp_path / "two\nlines"
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(odd / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 2, err  # the error and its hint
    assert "two\\nlines" in err.splitlines()[0] and "no such run directory" in err
