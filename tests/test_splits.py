"""splits.json: a run works from any working directory and after being moved; a damaged file gets one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from edgetl.data import read_splits
from edgetl.errors import EdgetlError, RunDirError
from edgetl.finetune import finetune


@pytest.fixture(scope="module")
def relative_run(digits, tmp_path_factory):
    """A 1-epoch run trained from a working directory with DATA and --out given as relative paths."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(digits["target"], work / "data" / "target")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        finetune(Path("runs/r"), tiny_config(Path("data/target"), epochs=1, batch_size=8))
    finally:
        os.chdir(cwd)
    return work


def test_splits_record_their_root(relative_run):
    d = json.loads((relative_run / "runs" / "r" / "splits.json").read_text())
    assert d["format"] == "edgetl-splits/2"
    assert d["root"] == str((relative_run / "data" / "target").resolve())
    assert d["root_relative_to_run"] == "../../data/target"
    assert d["train"]["paths"][0] == "train/5/" + sorted(os.listdir(relative_run / "data/target/train/5"))[0]


def test_run_works_from_elsewhere_and_after_moving(relative_run, tmp_path, monkeypatch):
    from edgetl.evaluate.run import eval_run
    from edgetl.export.run import export
    from edgetl.quantize import QuantizeSettings, quantize

    moved = tmp_path / "moved" / "r"
    shutil.copytree(relative_run / "runs" / "r", moved)  # the run alone, elsewhere: the absolute root holds
    monkeypatch.chdir(tmp_path)  # neither the run's folder nor where finetune ran
    expected = json.loads((moved / "metrics.json").read_text())["top1"]
    assert eval_run(moved).top1 == expected
    export(moved)
    out = quantize(moved, QuantizeSettings(precision="fp16"))
    assert out.entries["fp16"].eval_n == len(read_splits(moved / "splits.json")[1])
    train, val = read_splits(moved / "splits.json")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in train.paths + val.paths)


def test_run_and_data_moved_together(relative_run, tmp_path, monkeypatch):
    from edgetl.evaluate.run import eval_run

    project = tmp_path / "project"
    shutil.copytree(relative_run, project)
    expected = json.loads((project / "runs/r/metrics.json").read_text())["top1"]
    d = json.loads((project / "runs/r/splits.json").read_text())
    d["root"] = str(tmp_path / "gone")  # as if the original folder had been moved away
    (project / "runs/r/splits.json").write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    assert eval_run(project / "runs" / "r").top1 == expected
    assert read_splits(project / "runs/r/splits.json")[1].paths[0].startswith(str(project / "data" / "target") + os.sep)
    shutil.rmtree(project / "data")
    with pytest.raises(EdgetlError, match="the run's images are gone: not under .*gone"):
        read_splits(project / "runs/r/splits.json")


def test_first_format_is_still_read(relative_run, tmp_path, monkeypatch):
    """Paths as written by earlier versions: relative to where finetune ran."""
    new = json.loads((relative_run / "runs/r/splits.json").read_text())
    old = {k: {"classes": new[k]["classes"], "paths": ["data/target/" + p for p in new[k]["paths"]],
               "labels": new[k]["labels"]} for k in ("train", "val")}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(old))
    monkeypatch.chdir(relative_run)
    train, val = read_splits(path)
    assert val.paths == old["val"]["paths"] and train.labels == old["train"]["labels"]


BAD_SPLITS = {
    "not json": "{ this is not json",
    "empty": "",
    "a list": "[1, 2]",
    "no val": json.dumps({"train": {"classes": ["a"], "paths": [], "labels": []}}),
    "labels not ints": json.dumps({k: {"classes": ["a", "b"], "paths": ["x.png"], "labels": ["a"]} for k in ("train", "val")}),
    "label out of range": json.dumps({k: {"classes": ["a", "b"], "paths": ["x.png"], "labels": [7]} for k in ("train", "val")}),
    "lengths differ": json.dumps({k: {"classes": ["a", "b"], "paths": ["x.png", "y.png"], "labels": [0]} for k in ("train", "val")}),
    "unknown format": json.dumps({"format": "edgetl-splits/9", "root": "/", "root_relative_to_run": ".",
                                  **{k: {"classes": ["a"], "paths": [], "labels": []} for k in ("train", "val")}}),
}


@pytest.mark.parametrize("content", BAD_SPLITS.values(), ids=BAD_SPLITS.keys())
def test_damaged_splits_give_one_line(tmp_path, content):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(RunDirError) as e:
        read_splits(path)
    assert str(path) in e.value.message and "\n" not in str(e.value) and "finetune" in e.value.hint


def test_every_stage_refuses_a_damaged_splits_file(exported_copy):
    from edgetl.bench import BenchSettings, bench
    from edgetl.ship.bundle import make_bundle
    from edgetl.evaluate.run import eval_run
    from edgetl.export.run import export
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("badsplits")
    (run / "splits.json").write_text('{"train": {"classes": ["0"]}')
    for stage in (lambda: eval_run(run), lambda: export(run), lambda: quantize(run, QuantizeSettings(precision="fp16")),
                  lambda: make_bundle(run), lambda: bench(run, BenchSettings(backends="onnxruntime", iterations=1),
                                                          write=False)):
        with pytest.raises(EdgetlError, match="splits.json"):
            stage()
    assert not (run / "model.fp16.onnx").exists() and not (run / "bundles").exists()


def _interrupted(run_dir: Path, digits) -> Path:
    """A run folder as an interrupted finetune leaves it: settings, splits, a resume checkpoint."""
    cfg = tiny_config(digits["target"], epochs=2)
    run_dir.mkdir(parents=True)
    state = {"config": cfg.model_dump(mode="json"), "model": {}, "optimizer": {}, "scheduler": {}, "epoch": 0,
             "best": 0.5, "best_epoch": 0, "source_weights": {"kind": "none"}}
    torch.save(state, run_dir / "last_checkpoint.pt")
    return run_dir


def test_resume_with_a_damaged_checkpoint_gives_one_line(tmp_path, digits):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    run = _interrupted(tmp_path / "truncated", digits)
    data = (run / "last_checkpoint.pt").read_bytes()
    (run / "last_checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="unreadable checkpoint, truncated or corrupt"):
        finetune(run, tiny_config(digits["target"]), resume=True)

    run = _interrupted(tmp_path / "pickled", digits)
    torch.save({"config": {}, "x": Evil()}, run / "last_checkpoint.pt")
    with pytest.raises(RunDirError, match="pickled objects other than tensors") as e:
        finetune(run, tiny_config(digits["target"]), resume=True)
    assert "without --resume" in e.value.hint

    run = _interrupted(tmp_path / "foreign", digits)
    torch.save({"epoch": 3}, run / "last_checkpoint.pt")
    with pytest.raises(RunDirError, match="not an edgetl checkpoint"):
        finetune(run, tiny_config(digits["target"]), resume=True)

    run = _interrupted(tmp_path / "nosplits", digits)
    with pytest.raises(RunDirError, match="splits.json is missing"):
        finetune(run, tiny_config(digits["target"]), resume=True)
    assert (run / "last_checkpoint.pt").exists()  # nothing was deleted
