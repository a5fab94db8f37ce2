"""finetune under torchrun: 2 processes on the CPU with gloo (the CI setting; docs/multi-gpu.md).

Each torchrun launch costs several seconds of interpreter and torch start-up per process, so the module shares one
uninterrupted 2-process run (`ddp_run`) between its tests and launches torchrun four times in all.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from edgetl.card import ModelCard
from edgetl.errors import EdgetlError
from edgetl.evaluate.run import eval_run
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.finetune.distributed import World
from edgetl.finetune.loop import train_one_epoch
from edgetl.finetune.run import check_devices
from edgetl.stage import load_settings

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="this torch has no gloo backend")

# What the run trains; `epochs` comes from the command line (which wins over the file's 1). lp-ft: a probe epoch
# with the backbone frozen (BatchNorm in eval, DDP over the head alone), then every layer (DDP rebuilt).
SETTINGS = dict(model="test_resnet", pretrained=False, img_size=16, crop_pct=1.0, epochs=1, batch_size=16, lr=5e-3,
                augment="crop", workers=0, warmup_epochs=0.5, seed=0, dist_timeout=30.0, strategy="lp-ft",
                lp_epochs=1, backbone_lr_scale=1.0)
EPOCHS = 3
STOP_WITHIN_S = 60  # a dead or interrupted process ends the whole run within this (dist_timeout is 30 s)


@pytest.fixture(scope="module")
def odd_data(digits, tmp_path_factory) -> Path:
    """The digits source task with one train and one val image removed: 319 train and 79 val images, so that
    DistributedSampler pads both splits (a padded image must count once in validation, not twice)."""
    data = tmp_path_factory.mktemp("ddp") / "data"
    shutil.copytree(digits["source"], data)
    for split in ("train", "val"):
        sorted((data / split / "0").iterdir())[0].unlink()
    return data


@pytest.fixture(scope="module")
def settings_file(odd_data) -> Path:
    path = odd_data.parent / "settings.yaml"
    path.write_text(yaml.safe_dump({"data": "overridden by DATA", **SETTINGS}))
    return path


def _torchrun(*args, nproc: int = 2, logs: Path | None = None, popen: bool = False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           "--monitor-interval", "0.2"]
    if logs is not None:  # each process's stdout/stderr in its own file: what did rank 0 and rank 1 say
        cmd += ["--log-dir", str(logs), "--redirects", "3"]
    cmd += ["-m", "edgetl", "finetune", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _run_args(data: Path, settings: Path, out: Path, *more) -> list:
    return [data, "--out", out, "--config", settings, "--epochs", EPOCHS, *more]


@pytest.fixture(scope="module")
def ddp_run(odd_data, settings_file):
    run = odd_data.parent / "run"
    res = _torchrun(*_run_args(odd_data, settings_file, run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run, res


def _log_rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "train_log.csv").open()))


def test_two_processes_write_one_run_whose_metrics_equal_eval(ddp_run, odd_data):
    run, res = ddp_run
    assert sorted(p.name for p in odd_data.parent.iterdir()) == ["data", "run", "settings.yaml"]  # nothing beside it
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "confusion.png", "curves.png", "metrics.json",
                                                     "model.safetensors", "splits.json", "train_log.csv"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n"] == 79 and metrics["train_images"] == 319
    assert metrics["phases"] == [{"phase": "probe", "first_epoch": 1, "epochs": 1},
                                 {"phase": "finetune", "first_epoch": 2, "epochs": 2}]
    again = eval_run(run).model_dump(mode="json")
    for key in ("n", "top1", "top5", "macro_f1", "auc_roc", "confusion", "per_class_accuracy"):
        assert again[key] == metrics[key], key
    # The gathered validation counts each of the 79 images once: the best epoch's val top-1 (scored during
    # training on both processes' shares, padding dropped) is the final score, k/79 exactly.
    rows = _log_rows(run)
    assert len(rows) == EPOCHS
    assert float(rows[metrics["best_epoch"] - 1]["val_top1"]) == metrics["top1"]
    assert round(metrics["top1"] * 79, 6).is_integer()
    # Rank 0 alone reports: one line per epoch, once.
    assert res.stdout.count("epoch   1  train loss") == 1 and "Traceback" not in res.stderr
    # config.yaml: the settings (file values, the command line winning), the batch arithmetic stated.
    text = (run / "config.yaml").read_text()
    assert text.startswith("# global batch 16 (batch_size) = 2 process(es) x 8 image(s) x accumulate 1; lr 0.005 "
                           "applies to the global batch, unscaled")
    recorded = yaml.safe_load(text)
    assert recorded["out"] == str(run) and recorded["data"] == str(odd_data)
    cfg = load_settings(FinetuneSettings, run / "config.yaml")
    assert cfg.epochs == EPOCHS and cfg.model == "test_resnet" and cfg.batch_size == 16


def test_two_half_batches_end_close_to_one_full_batch(ddp_run, odd_data, tmp_path):
    """1 process x batch 16 against 2 processes x 8: the same global batch, learning rate, steps, initial weights
    and data. What differs: the order the images come in (RandomSampler vs DistributedSampler draw different
    permutations from the same seed), BatchNorm statistics over 8 images instead of 16, and each process's
    augmentation stream. Both must end as good: within 0.1 top-1, about two standard deviations of the difference
    of two accuracies measured on 79 images (sqrt(2 x 0.9 x 0.1 / 79) = 0.048)."""
    run, _ = ddp_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process has (OMP_NUM_THREADS=1); on a busy machine 2 threads crawl
    try:
        one = finetune(tmp_path / "one", FinetuneSettings(data=str(odd_data), **{**SETTINGS, "epochs": EPOCHS}))
    finally:
        torch.set_num_threads(threads)
    two = json.loads((run / "metrics.json").read_text())
    assert one.world_size == 1 and one.n == two["n"] == 79
    assert one.top1 > 0.6 and two["top1"] > 0.6  # both learnt (5 classes: chance is 0.2)
    assert abs(one.top1 - two["top1"]) <= 0.1, (one.top1, two["top1"])


def _children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _rank_pid(agent: int, rank: int) -> int:
    for pid in _children(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} under torchrun {agent}")


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen) -> None:
    """Until the first epoch's checkpoint is written (atomically: its final name appears complete)."""
    deadline = time.monotonic() + 300
    while not (run / "last_checkpoint.pt").exists() and not (_pending(run) / "last_checkpoint.pt").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"torchrun exited {proc.returncode} before the signal:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no epoch finished")
        time.sleep(0.02)


def _pending(run: Path) -> Path:
    from edgetl.rundir import pending_dir

    return pending_dir(run)


def _rank_lines(logs: Path, rank: int, stream: str = "stderr") -> list[str]:
    files = list(logs.rglob(f"attempt_0/{rank}/{stream}.log"))
    assert len(files) == 1, files
    return [line for line in files[0].read_text().splitlines() if line.strip()]


def _skip_without_proc() -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the processes torchrun started")


def test_ctrl_c_stops_every_process_and_resume_ends_with_the_same_weights(ddp_run, odd_data, settings_file, tmp_path):
    _skip_without_proc()
    straight, _ = ddp_run
    run, logs = tmp_path / "run", tmp_path / "logs"
    proc = _torchrun(*_run_args(odd_data, settings_file, run), logs=logs, popen=True)
    _wait_for_checkpoint(run, proc)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: to torchrun and every process
    proc.communicate(timeout=STOP_WITHIN_S)
    assert proc.returncode != 0 and time.monotonic() - t0 < STOP_WITHIN_S
    rank0, rank1 = _rank_lines(logs, 0), _rank_lines(logs, 1)
    assert len(rank0) == 1 and rank0[0].startswith("interrupted (SIGINT): finetune stopped; the checkpoint of its "
                                                   "last finished epoch is kept"), rank0
    assert "torchrun --nproc_per_node 2 -m edgetl finetune" in rank0[0] and "--resume" in rank0[0]
    assert rank1 == []  # the other process stops silently: rank 0 speaks for the run
    assert (run / "last_checkpoint.pt").exists() and not (run / "metrics.json").exists()
    stopped_after = len(_log_rows(run))
    assert 1 <= stopped_after < EPOCHS

    res = _torchrun(odd_data, "--out", run, "--resume")  # the settings come from the checkpoint
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resuming {run} after epoch {stopped_after}" in res.stdout
    assert ModelCard.from_safetensors(run / "model.safetensors").weights_sha256 == \
        ModelCard.from_safetensors(straight / "model.safetensors").weights_sha256  # bit-identical weights
    assert _log_rows(run) == [{**r, "epoch_seconds": r2["epoch_seconds"], "images_per_second": r2["images_per_second"]}
                              for r, r2 in zip(_log_rows(straight), _log_rows(run))]
    assert not (run / "last_checkpoint.pt").exists()


def test_a_killed_process_stops_the_other_with_one_line(odd_data, settings_file, tmp_path):
    _skip_without_proc()
    run, logs = tmp_path / "run", tmp_path / "logs"
    proc = _torchrun(*_run_args(odd_data, settings_file, run), logs=logs, popen=True)
    _wait_for_checkpoint(run, proc)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)  # no clean-up, no message: as a crashed node or OOM kill
    t0 = time.monotonic()
    proc.communicate(timeout=STOP_WITHIN_S)
    assert proc.returncode != 0 and time.monotonic() - t0 < STOP_WITHIN_S
    lines = _rank_lines(logs, 0)
    # gloo sees the closed connection first, or torchrun, seeing rank 1 gone, stops rank 0 with SIGTERM first.
    assert len(lines) == 1, lines
    assert lines[0].startswith(("error: rank 0 of 2: another process of this run stopped or stopped answering",
                                "interrupted (SIGTERM): finetune stopped")), lines
    assert "--resume" in lines[0] and "Traceback" not in lines[0]
    assert (run / "last_checkpoint.pt").exists()  # the last finished epoch stays resumable


# --- without a second process -----------------------------------------------------------------------------------
def test_the_global_batch_must_split_into_processes_and_micro_steps():
    cfg = FinetuneSettings(data="d", batch_size=30, accumulate=2)
    with pytest.raises(EdgetlError, match=r"batch_size 30: the global batch does not split into 4 process\(es\) x "
                                          r"accumulate 2") as e:
        check_devices(cfg, torch.device("cpu"), World(rank=0, local_rank=0, size=4))
    assert "multiple of 8" in e.value.hint
    check_devices(cfg.model_copy(update={"batch_size": 32}), torch.device("cpu"), World(size=4))
    with pytest.raises(EdgetlError, match="sync_bn: SyncBatchNorm runs on CUDA devices only"):
        check_devices(cfg.model_copy(update={"batch_size": 32, "sync_bn": True}), torch.device("cpu"), World(size=2))


def test_accumulated_micro_batches_make_the_step_of_the_whole_batch():
    """accumulate 2 over two batches of 4 = one step over the 8 images (a model without BatchNorm, whose output
    for an image does not depend on the rest of its batch)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(batches, accumulate):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        steps = []
        stats = train_one_epoch(model, batches, opt, torch.nn.CrossEntropyLoss(), torch.device("cpu"),
                                accumulate=accumulate, on_step=steps.append)
        return model, steps, stats

    whole, steps_whole, _ = step([(x, y)], 1)
    halves, steps_halves, stats = step([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    assert steps_whole == steps_halves == [1] and stats["images"] == 8
    for a, b in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    _, steps, stats = step([(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])], 2)
    assert steps == [1] and stats["images"] == 6  # an incomplete trailing group is skipped
