"""The training loop on real (tiny) data: it learns, evaluates honestly, freezes what it says, resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError, RunDirError
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.models import load_trained
from edgetl.rundir import RunDir
from edgetl.stage import load_settings
from tests.conftest import Recorder, tiny_config


def test_learns_far_better_than_chance(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["top1"] >= 0.9  # 5 classes: chance is 0.2
    assert metrics["auc_roc"] > 0.9
    assert set(metrics) >= {"top1", "top5", "macro_f1", "auc_roc", "per_class_accuracy", "classes", "confusion"}
    assert sum(map(sum, metrics["confusion"])) == metrics["n"] == 80
    for name in ("config.yaml", "model.safetensors", "train_log.csv", "curves.png", "confusion.png", "splits.json"):
        assert (trained_run / name).exists(), name
    assert not (trained_run / "last_checkpoint.pt").exists()
    log = (trained_run / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss") and len(log) == 6


def test_card_travels_in_the_checkpoint(trained_run):
    card = ModelCard.from_safetensors(trained_run / "model.safetensors")
    assert card.model == "resnet18" and card.class_names == ["0", "1", "2", "3", "4"]
    assert card.input_size == (3, 32, 32) and card.resize == 32 and len(card.weights_sha256) == 64
    with safe_open(str(trained_run / "model.safetensors"), "pt") as f:
        assert "fc.weight" in f.keys()


def test_linear_strategy_leaves_backbone_unchanged(trained_run, digits, tmp_path):
    cfg = tiny_config(digits["target"], weights=str(trained_run), strategy="linear", epochs=2)
    run = RunDir(tmp_path / "linear")
    result = finetune(run, cfg)
    before, _ = load_trained(trained_run)
    after, card = load_trained(run.path)
    changed_head = False
    for (k, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        if k.startswith("fc."):
            changed_head = True
            continue
        assert torch.equal(a, b), f"{k} changed under --strategy linear"
    assert changed_head and card.class_names == ["5", "6", "7", "8", "9"]
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics == result.model_dump(mode="json", exclude={"baseline"})  # the result is the file
    assert metrics["frozen_params"] > 10 * metrics["trainable_params"]
    assert metrics["source_weights"]["kind"] == "run"


def test_resume_gives_the_same_result(digits, tmp_path):
    straight, resumed = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    finetune(straight, tiny_config(digits["source"], epochs=3, batch_size=64))

    class Interrupt(Exception):
        pass

    def stop_after_second(row):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(resumed, tiny_config(digits["source"], epochs=3, batch_size=64), Recorder(stop_after_second))
    assert (tmp_path / "b" / "last_checkpoint.pt").exists() and not (tmp_path / "b" / "metrics.json").exists()
    events = Recorder()
    finetune(resumed, tiny_config(digits["source"]), events, resume=True)  # epochs 5, batch 16 given: ignored
    assert events.warnings == ["--resume continues with the run's recorded settings; ignored: batch_size=16 "
                               "(recorded 64), epochs=5 (recorded 3) (start a new run, or --overwrite, to change them)"]
    a = json.loads((straight.path / "metrics.json").read_text())
    b = json.loads((resumed.path / "metrics.json").read_text())
    assert a["top1"] == b["top1"] and a["confusion"] == b["confusion"] and a["best_epoch"] == b["best_epoch"]
    card_a = ModelCard.from_safetensors(straight.weights)
    card_b = ModelCard.from_safetensors(resumed.weights)
    assert card_a.weights_sha256 == card_b.weights_sha256  # bit-identical weights
    assert (resumed.path / "train_log.csv").read_text().count("\n") == 4


def test_existing_run_is_not_overwritten(trained_run, digits):
    with pytest.raises(RunDirError, match="exists and is not empty"):
        finetune(trained_run, tiny_config(digits["source"]))
    with pytest.raises(RunDirError, match="nothing to resume"):
        finetune(trained_run, tiny_config(digits["source"]), resume=True)


def test_failed_run_leaves_no_directory(digits, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(EdgetlError, match="unknown model"):
        finetune(out, tiny_config(digits["source"], model="no_such_net"))
    assert not out.exists()


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": "d", "out": "o", "epochs": 4, "lr": 0.01}))
    cfg = load_settings(FinetuneSettings, path, {"epochs": 7, "lr": None})
    assert cfg.epochs == 7 and cfg.lr == 0.01 and cfg.model == "resnet50"
    assert "out" not in cfg.model_dump()  # a run's recorded `out` is read and ignored: the run argument says where
    with pytest.raises(EdgetlError, match="strategy"):
        load_settings(FinetuneSettings, None, {"data": "d", "strategy": "bogus"})
    with pytest.raises(EdgetlError, match="'epochs'"):
        load_settings(FinetuneSettings, None, {"data": "d", "epochs": 0})


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_bad_inputs_give_one_line_and_exit_1(tmp_path, digits):
    for args in (["finetune", tmp_path / "nope", "--out", tmp_path / "o"],
                 ["finetune", digits["source"], "--out", tmp_path / "o", "--model", "no_such_net", "--no-pretrained"],
                 ["eval", tmp_path / "no_run"]):
        res = _cli(*args)
        assert res.returncode == 1, res
        assert "Traceback" not in res.stderr + res.stdout
        assert res.stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_cli_finetune_skip_bad_images_and_eval(tmp_path, digits):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits["source"], data)
    (data / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = _cli("finetune", data, "--out", tmp_path / "r", "--model", "resnet18", "--no-pretrained", "--img-size", "32",
               "--epochs", "1", "--workers", "0")
    assert res.returncode == 1 and "broken.png" in res.stderr and "--skip-bad-images" in res.stderr
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"data": "ignored: DATA wins", "augment": "crop", "epochs": 3, "seed": 7}))
    res = _cli("finetune", data, "--out", tmp_path / "r", "--model", "resnet18", "--no-pretrained", "--img-size", "32",
               "--epochs", "1", "--workers", "0", "--skip-bad-images", "--config", settings)
    assert res.returncode == 0, res.stderr
    assert "skipped 1 unreadable image(s)" in res.stdout and "broken.png" in res.stdout
    recorded = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())  # the settings file of the run
    assert recorded["epochs"] == 1 and recorded["augment"] == "crop" and recorded["seed"] == 7  # option wins, file fills
    assert recorded["data"] == str(data) and recorded["out"] == str(tmp_path / "r")
    assert "best epoch 1 of 1" in res.stdout  # the result, rendered
    res = _cli("eval", tmp_path / "r", "--json", tmp_path / "m.json")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 80


def test_a_one_step_run_logs_no_scheduler_notice(digits, tmp_path, caplog):
    """One epoch of one batch: timm's cosine schedule has one step and would log a notice nobody can act on."""
    import logging

    caplog.set_level(logging.WARNING)
    result = finetune(RunDir(tmp_path / "r"), tiny_config(digits["source"], epochs=1, batch_size=512))
    assert result.epochs_run == 1
    assert "Cosine annealing" not in caplog.text and not [r for r in caplog.records if r.name.startswith("timm")]


# -- the loop's decisions, without training --------------------------------------------------------------

def test_plan_resume_starts_after_the_checkpoint_and_carries_the_optimizer_within_a_phase():
    from edgetl.finetune.loop import ResumePlan, plan_resume
    from edgetl.models import strategy_phases

    phases = strategy_phases("lp-ft", 4, lp_epochs=1)  # probe: epoch 0; finetune: epochs 1-3
    new = plan_resume(phases, 4, None)
    assert (new.start_epoch, new.phase.name, new.restore_optimizer) == (0, "probe", False)
    after_probe = plan_resume(phases, 4, 0)  # the checkpoint ended the probe: fine-tuning starts fresh
    assert (after_probe.start_epoch, after_probe.phase.name, after_probe.restore_optimizer) == (1, "finetune", False)
    within = plan_resume(phases, 4, 1)
    assert (within.start_epoch, within.phase.name, within.restore_optimizer) == (2, "finetune", True)
    finished = plan_resume(phases, 4, 3)  # nothing left to train: the last phase, its state carried
    assert (finished.start_epoch, finished.phase is phases[-1], finished.restore_optimizer) == (4, True, True)
    (full,) = strategy_phases("full", 3)
    assert plan_resume([full], 3, 0) == ResumePlan(1, full, True)


def test_early_stop_counts_epochs_without_improvement_in_the_last_phase_only():
    from edgetl.finetune.loop import stops_early
    from edgetl.models import strategy_phases

    probe, tune = phases = strategy_phases("lp-ft", 6, lp_epochs=2)  # probe: 0-1; finetune: 2-5
    assert not stops_early(None, phases, tune, 5, 0)  # no patience: never
    assert not stops_early(1, phases, probe, 1, 0)  # the probe never ends the run
    assert not stops_early(2, phases, tune, 2, 0)  # the count starts with the phase: one epoch in
    assert stops_early(2, phases, tune, 3, 0)  # two epochs of the phase, no better one
    assert not stops_early(2, phases, tune, 4, 3) and stops_early(2, phases, tune, 5, 3)
    (full,) = single = strategy_phases("full", 5)
    assert not stops_early(1, single, full, 0, 0) and stops_early(1, single, full, 1, 0)


def test_backbone_rate_and_augmentation_per_phase():
    from edgetl.finetune.loop import augments, backbone_lr_scale
    from edgetl.models import strategy_phases

    cfg = FinetuneSettings(data=".", backbone_lr_scale=0.1)
    (full,) = strategy_phases("full", 3)
    probe, tune = lp_ft = strategy_phases("lp-ft", 3)
    assert backbone_lr_scale(cfg, [full], from_scratch=False) == 0.1
    assert backbone_lr_scale(cfg, [full], from_scratch=True) == 1.0  # nothing learnt to protect
    assert backbone_lr_scale(cfg, lp_ft, from_scratch=False) == 1.0  # the phase's own rate covers every layer
    assert augments(cfg, full) and augments(cfg, tune) and not augments(cfg, probe)
    assert augments(cfg.model_copy(update={"linear_augment": True}), probe)
