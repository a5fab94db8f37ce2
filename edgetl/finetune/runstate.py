"""What a finetune run keeps on disk while it trains: the folder it trains in (the run itself, or a pending sibling
that replaces it when `overwrite` finishes), the resume checkpoint of its last finished epoch, and its log.
Only rank 0 calls the writers here."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from edgetl import __version__
from edgetl.errors import RunDirError, first_line
from edgetl.finetune.settings import FinetuneSettings
from edgetl.io import atomic_path, write_json, write_text
from edgetl.rundir import RunDir, check_out_and_data, check_replaceable, foreign_entries, pending_dir, replace_dir

# lr is the head's rate at the epoch's end, backbone_lr the lowest rate any trained layer had then (blank when
# only the head trains): with backbone_lr_scale 0.1 the two differ tenfold.
LOG_FIELDS = ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "backbone_lr", "epoch_seconds",
              "images_per_second", "phase"]
_CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "epoch", "best", "best_epoch", "source_weights")
RESUME_HINT = "start the run again without --resume (--overwrite replaces it)"


def fresh_dir(target: RunDir, data: str, overwrite: bool) -> RunDir:
    """The folder a new run trains in: `target` itself when it is new or empty; with `overwrite`, a pending
    sibling that replaces `target` once the run has finished (a failed or interrupted run deletes nothing)."""
    check_out_and_data(target.path, data)
    if not (target.path.exists() and any(p != target.lock for p in target.path.iterdir())):  # our own lock: empty
        return target
    if not overwrite:
        raise RunDirError(f"{target.path}: exists and is not empty",
                          f"continue it: edgetl finetune {data} --out {target.path} --resume; replace it: ... --overwrite")
    check_replaceable(target.path)
    pending = pending_dir(target.path)
    if pending.exists():  # an earlier overwrite that was interrupted: edgetl's own, replaced by this one
        if foreign_entries(pending):
            raise RunDirError(f"{pending}: holds files edgetl did not write", "move it away, then run again")
        shutil.rmtree(pending)
    return RunDir(pending)


def resume_dir(target: RunDir) -> RunDir:
    """An interrupted overwrite left its checkpoint (or its finished run, waiting for its twin) in the pending
    sibling: that is the run to continue."""
    pending = RunDir(pending_dir(target.path))
    return pending if pending.checkpoint.exists() or twin_pending(pending) else target


def twin_pending(run: RunDir) -> bool:
    """The run finished (metrics.json, no checkpoint) but its from-scratch twin did not: the twin was stopped,
    before or after its own first epoch. metrics.json gets its baseline entry only once the twin finished."""
    if run.checkpoint.exists() or not run.metrics.exists() or not run.config.exists():
        return False
    import json

    try:
        settings = yaml.safe_load(run.config.read_text(encoding="utf-8"))
        metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False
    return (isinstance(settings, dict) and settings.get("baseline") == "scratch" and isinstance(metrics, dict)
            and metrics.get("baseline") is None)


def publish(run: RunDir, target: RunDir) -> None:
    """A run trained in a pending sibling replaces the target only now, when it is complete."""
    if run.path != target.path:
        replace_dir(run.path, target.path)  # only now is the previous run deleted


def interrupted_note(cfg: FinetuneSettings, run: RunDir, target: RunDir, processes: int) -> str:
    """What an interrupted finetune kept, in one line."""
    previous = f"; {target.path} still holds the previous run" if run.path != target.path else ""
    how = (f"edgetl finetune {cfg.data} --out {target.path} --resume" if processes == 1 else
           f"torchrun --nproc_per_node {processes} -m edgetl finetune {cfg.data} --out {target.path} --resume")
    if twin_pending(run):
        return (f"finetune stopped during the from-scratch baseline; the finished run is kept in {run.path}"
                f"{previous}; continue the baseline with: {how}")
    if run.checkpoint.exists():
        return (f"finetune stopped; the checkpoint of its last finished epoch is kept in {run.path}{previous}; "
                f"continue with: {how}")
    return f"finetune stopped before its first epoch finished: no new run was kept{previous}"


def load_checkpoint(path: Path) -> tuple[dict[str, Any], FinetuneSettings]:
    """The resume state, or one line saying why it cannot be used (truncated, pickled objects, not edgetl's)."""
    import pickle

    from pydantic import ValidationError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise RunDirError(f"{path}: unreadable checkpoint, truncated or corrupt ({first_line(e)})", RESUME_HINT) from None
        # weights_only refuses anything beyond tensors and plain containers: edgetl never writes such a file.
        raise RunDirError(f"{path}: holds pickled objects other than tensors, which edgetl does not load "
                          "(it did not write this file)", RESUME_HINT) from None
    except Exception as e:  # a truncated zip raises RuntimeError, EOFError or OSError depending on where it ends
        raise RunDirError(f"{path}: unreadable checkpoint, truncated or corrupt ({first_line(e)})", RESUME_HINT) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirError(f"{path}: not an edgetl checkpoint (no {', '.join(missing)})", RESUME_HINT)
    try:
        cfg = FinetuneSettings.model_validate(state["config"])
    except ValidationError as e:
        err = e.errors()[0]
        raise RunDirError(f"{path}: its settings are invalid ({'.'.join(map(str, err['loc']))}: {err['msg']})",
                          RESUME_HINT) from None
    return state, cfg


def save_checkpoint(run: RunDir, cfg: FinetuneSettings, model, optimizer, scheduler, scaler, epoch: int, best: float,
                    best_epoch: int, source_weights: dict) -> None:
    state = {"config": cfg.model_dump(mode="json"), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "epoch": epoch, "best": best, "best_epoch": best_epoch, "source_weights": source_weights,
             "edgetl_version": __version__}
    with atomic_path(run.checkpoint) as tmp:  # a full disk: one RunDirError (io.disk_errors), no partial file
        torch.save(state, tmp)


def log_state(run: RunDir) -> Path:
    """The per-epoch rows as JSON, kept next to train_log.csv until the run finishes (resume reads them back)."""
    return run.path / ".train_log.json"


def write_log(run: RunDir, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run.train_log, buf.getvalue())
    write_json(log_state(run), rows)
