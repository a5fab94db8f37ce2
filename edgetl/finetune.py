"""The training loop: transfer a pretrained backbone to a new set of classes."""

from __future__ import annotations

import csv
import io
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from edgetl import __version__
from edgetl.card import ModelCard
from edgetl.config import FinetuneConfig, dump_config
from edgetl.data import ImageDataset, check_splits, load_splits, make_loader, read_splits, save_splits
from edgetl.data.skipped import SkippedImages
from edgetl.data.transforms import eval_transform, resize_size, train_transform
from edgetl.errors import EdgetlError, Interrupted, RunDirError
from edgetl.io import atomic_path, read_json, write_json, write_text
from edgetl.models import (Phase, apply_strategy, create_model, param_groups, set_train_mode, strategy_phases,
                           weights_digest)
from edgetl.rundir import RunDir, check_out_and_data, check_replaceable, foreign_entries, pending_dir, replace_dir

LOG_FIELDS = ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "epoch_seconds", "images_per_second",
              "phase"]


@dataclass
class Events:
    """Callbacks for progress display; the CLI wires them to rich, tests leave them silent."""

    message: Callable[[str], None] = lambda text: None
    epoch_start: Callable[[int, int, int], None] = lambda epoch, epochs, steps: None
    step: Callable[[int], None] = lambda done: None
    epoch_end: Callable[[dict[str, Any]], None] = lambda row: None
    check_progress: Callable[[int, int], None] | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgetlError("--device cuda: no CUDA device is visible here", "use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_card(cfg: FinetuneConfig, model: nn.Module, classes: list[str], source: dict[str, Any]) -> ModelCard:
    """Preprocessing from the model's own pretrained config (timm's resolve_model_data_config), sized as asked."""
    import timm.data

    data_cfg = timm.data.resolve_model_data_config(model)
    size = cfg.img_size or data_cfg["input_size"][1]
    crop_pct = cfg.crop_pct or data_cfg.get("crop_pct", 0.875)
    return ModelCard(model=cfg.model, class_names=list(classes), input_size=(3, size, size),
                     resize=resize_size(size, crop_pct), interpolation=data_cfg.get("interpolation", "bilinear"),
                     mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]), source_weights=source)


def save_weights(path: Path, model: nn.Module, card: ModelCard) -> ModelCard:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    card = card.model_copy(update={"weights_sha256": weights_digest(state)})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=card.metadata())
    return card


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False, events: Events | None = None) -> RunDir:
    """Train per `cfg` into the run directory `cfg.out`; returns it. See README 'finetune'."""
    ev = events or Events()
    check_plan(cfg)
    target = RunDir(cfg.out)
    run = target  # where this call trains: the target, or a pending sibling that replaces it at the end
    state: dict[str, Any] | None = None
    if resume:
        run = _resume_dir(target)
        if not run.checkpoint.exists() and run.metrics.exists() and RunDir(run.baseline_scratch).checkpoint.exists():
            # The transfer run finished; only its from-scratch twin was interrupted.
            train, val = read_splits(run.splits)
            _run_baseline(run, train, val, resolve_device(_run_config(run).device), ev)
            return _publish(run, target)
        if not run.checkpoint.exists():
            done = " (it finished: nothing to resume)" if run.metrics.exists() else ""
            raise RunDirError(f"{run.path}: no {run.checkpoint.name} to resume from{done}")
        state, cfg = _load_checkpoint(run.checkpoint)
        train, val = read_splits(run.splits)
        ev.message(f"resuming {run.path} after epoch {state['epoch'] + 1}")
    else:
        run = _fresh_dir(target, cfg.data, overwrite)
        train, val = load_splits(cfg.data, cfg.val_fraction, cfg.seed)
        if cfg.check != "none":
            ev.message(f"checking {len(train) + len(val)} images in {cfg.data} ({cfg.check})")
        checked = check_splits(train, val, cfg.data, cfg.check, skip_bad=cfg.skip_bad_images,
                               progress=ev.check_progress, warn=ev.message)
        train, val, bad = checked.train, checked.val, checked.bad
        if checked.cached:
            ev.message(f"{checked.cached} image(s) unchanged since an earlier check, {checked.checked} checked now")
        if bad:
            ev.message(f"skipped {len(bad)} unreadable image(s): " + "; ".join(f"{p} ({r})" for p, r in bad[:10])
                       + (" ..." if len(bad) > 10 else ""))
    device = resolve_device(cfg.device)
    created = not run.path.exists()
    if not resume and bad:
        SkippedImages(run.bad_images).add(bad, "check")  # removed with the run if it fails before an epoch ends
    try:
        _train(cfg, run, train, val, device, state, ev)
    except BaseException as e:
        # A run that never finished an epoch has nothing worth keeping; later failures keep the
        # last consistent checkpoint so --resume can continue.
        if created and not run.checkpoint.exists() and run.path.exists():
            shutil.rmtree(run.path, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
            raise Interrupted(_interrupted_note(cfg, run, target)) from e
        raise
    if cfg.baseline == "scratch":
        _run_baseline(run, train, val, device, ev)
    return _publish(run, target)


def _publish(run: RunDir, target: RunDir) -> RunDir:
    """A run trained in a pending sibling replaces the target only now, when it is complete."""
    if run.path != target.path:
        replace_dir(run.path, target.path)  # only now is the previous run deleted
    return target


def _fresh_dir(target: RunDir, data: str, overwrite: bool) -> RunDir:
    """The folder a new run trains in: `target` itself when it is new or empty; with --overwrite, a pending
    sibling that replaces `target` once the run has finished (a failed or interrupted run deletes nothing)."""
    check_out_and_data(target.path, data)
    if not (target.path.exists() and any(target.path.iterdir())):
        return target
    if not overwrite:
        raise RunDirError(f"{target.path}: exists and is not empty", "pass --resume to continue it or --overwrite to replace it")
    check_replaceable(target.path)
    pending = pending_dir(target.path)
    if pending.exists():  # an earlier --overwrite that was interrupted: edgetl's own, replaced by this one
        if foreign_entries(pending):
            raise RunDirError(f"{pending}: holds files edgetl did not write", "move it away, then run again")
        shutil.rmtree(pending)
    return RunDir(pending)


def _resume_dir(target: RunDir) -> RunDir:
    """An interrupted --overwrite left its checkpoint in the pending sibling: that is the run to continue."""
    pending = RunDir(pending_dir(target.path))
    return pending if pending.checkpoint.exists() else target


def _interrupted_note(cfg: FinetuneConfig, run: RunDir, target: RunDir) -> str:
    """What an interrupted finetune kept, in one line."""
    previous = f"; {target.path} still holds the previous run" if run.path != target.path else ""
    if run.checkpoint.exists():
        return (f"finetune stopped; the checkpoint of its last finished epoch is kept in {run.path}{previous}; "
                f"continue with: edgetl finetune {cfg.data} --out {target.path} --resume")
    return f"finetune stopped before its first epoch finished: no new run was kept{previous}"


_CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "epoch", "best", "best_epoch", "source_weights")


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], FinetuneConfig]:
    """The resume state, or one line saying why it cannot be used (truncated, pickled objects, not edgetl's)."""
    import pickle

    from pydantic import ValidationError

    from edgetl.errors import first_line

    hint = "start the run again without --resume (--overwrite replaces it)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise RunDirError(f"{path}: unreadable checkpoint, truncated or corrupt ({first_line(e)})", hint) from None
        # weights_only refuses anything beyond tensors and plain containers: edgetl never writes such a file.
        raise RunDirError(f"{path}: holds pickled objects other than tensors, which edgetl does not load "
                          "(it did not write this file)", hint) from None
    except Exception as e:  # a truncated zip raises RuntimeError, EOFError or OSError depending on where it ends
        raise RunDirError(f"{path}: unreadable checkpoint, truncated or corrupt ({first_line(e)})", hint) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirError(f"{path}: not an edgetl checkpoint (no {', '.join(missing)})", hint)
    try:
        cfg = FinetuneConfig.model_validate(state["config"])
    except ValidationError as e:
        err = e.errors()[0]
        raise RunDirError(f"{path}: its settings are invalid ({'.'.join(map(str, err['loc']))}: {err['msg']})",
                          hint) from None
    return state, cfg


def _run_config(run: RunDir) -> FinetuneConfig:
    return FinetuneConfig.model_validate(yaml.safe_load(run.config.read_text(encoding="utf-8")))


def check_plan(cfg: FinetuneConfig) -> None:
    """Settings that only make sense together, checked before any image is read or file written.
    --baseline scratch compares a transfer run with its twin: the run itself must start from weights."""
    strategy_phases(cfg.strategy, cfg.epochs, cfg.lp_epochs)
    if cfg.baseline == "scratch" and cfg.weights is None and not cfg.pretrained:
        raise EdgetlError("--baseline scratch: this run has no source weights, so it is the from-scratch run itself",
                          "give --weights FILE or --pretrained, or drop --baseline")


def baseline_config(cfg: FinetuneConfig, out: Path) -> FinetuneConfig:
    """The from-scratch twin: the same data, recipe, budget and seed, no source weights. Every layer trains
    (a random backbone has nothing to freeze or protect, the rule that also trains it at the full rate)."""
    return cfg.model_copy(update={"out": str(out), "weights": None, "pretrained": False, "strategy": "full",
                                  "lp_epochs": None, "baseline": None})


def _run_baseline(run: RunDir, train, val, device, ev: Events) -> None:
    """Train (or resume) RUN/baseline-scratch on the run's own splits, then add the gain to RUN/metrics.json."""
    cfg = _run_config(run)
    twin = RunDir(run.baseline_scratch)
    state = None
    if twin.checkpoint.exists():
        state, _ = _load_checkpoint(twin.checkpoint)
        ev.message(f"resuming the from-scratch baseline {twin.path} after epoch {state['epoch'] + 1}")
    elif twin.path.exists():
        shutil.rmtree(twin.path)  # a twin that never finished an epoch (edgetl wrote it, inside this run)
    ev.message(f"baseline: the same data, recipe and budget from scratch -> {twin.path}")
    try:
        _train(baseline_config(cfg, twin.path), twin, train, val, device, state, ev)
    except BaseException:
        if not twin.checkpoint.exists():
            shutil.rmtree(twin.path, ignore_errors=True)
        raise
    metrics = read_json(run.metrics)
    base = read_json(twin.metrics)
    gain = metrics["top1"] - base["top1"]
    metrics["baseline"] = {"kind": "scratch", "run": run.baseline_scratch.name, "top1": base["top1"], "macro_f1": base["macro_f1"],
                           "gain_top1": gain, "gain_macro_f1": metrics["macro_f1"] - base["macro_f1"],
                           "negative_transfer": gain < 0}
    write_json(run.metrics, metrics)
    ev.message(f"transfer vs from scratch: top-1 {metrics['top1']:.4f} vs {base['top1']:.4f} "
               f"({gain * 100:+.1f} points)")
    if gain < 0:
        ev.message(f"warning: negative transfer: the source weights made top-1 {-gain * 100:.1f} points worse than "
                   f"training from scratch on the same data and budget")


def _train(cfg, run, train, val, device, state, ev: Events) -> RunDir:
    from timm.scheduler import CosineLRScheduler

    seed_everything(cfg.seed)
    weights = cfg.weights
    model, load_report = create_model(cfg.model, len(train.classes), pretrained=cfg.pretrained and weights is None,
                                      weights=weights, img_size=cfg.img_size)
    ev.message(load_report.summary())
    card = make_card(cfg, model, train.classes, load_report.source)
    phases = strategy_phases(cfg.strategy, cfg.epochs, cfg.lp_epochs, cfg.backbone_lr_scale)
    freeze = apply_strategy(model, phases[0].strategy, cfg.unfreeze)
    ev.message(f"strategy {cfg.strategy}: {freeze['trainable']:,} trainable, {freeze['frozen']:,} frozen parameters"
               + (f" for {phases[0].epochs} probe epoch(s), then every layer at {cfg.backbone_lr_scale:g} x the rate "
                  f"for {phases[1].epochs}" if len(phases) > 1 else ""))

    run.path.mkdir(parents=True, exist_ok=True)
    if state is None:
        write_text(run.config, dump_config(cfg))
        save_splits(run.splits, train, val)

    use_cuda = device.type == "cuda"
    amp_dtype = None
    if use_cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    memory_format = torch.channels_last if (use_cuda and cfg.channels_last) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    # A training image that passed the up-front check (header only, or changed since) and fails to decode is
    # skipped and listed in RUN/bad_images.json; val images were decoded in full by the check.
    train_ds = ImageDataset(train, train_transform(card, cfg.augment, seed=cfg.seed), skip_bad=True)
    skipped = SkippedImages(run.bad_images, ev.message)
    train_ds.check_output_size(card)
    val_ds = ImageDataset(val, eval_transform(card))
    steps_per_epoch = max(1, len(train_ds) // cfg.batch_size)
    # A lower backbone rate protects what the source task learnt; a random backbone has nothing to protect.
    from_scratch = load_report.source.get("kind") == "none"
    if from_scratch and (cfg.backbone_lr_scale != 1.0 or cfg.layer_decay is not None):
        ev.message("no source weights: the backbone trains at the full learning rate")

    def enter(phase: Phase):
        """Freeze per the phase; a fresh optimizer and schedule over the phase's own epochs."""
        freeze = apply_strategy(model, phase.strategy, cfg.unfreeze)
        # lp-ft's fine-tuning phase runs every layer, head included, at the phase's lower rate.
        backbone_scale = 1.0 if (from_scratch or len(phases) > 1) else cfg.backbone_lr_scale
        lr = cfg.lr * phase.lr_scale
        optimizer = torch.optim.AdamW(param_groups(model, lr, cfg.weight_decay, backbone_scale,
                                                   None if from_scratch else cfg.layer_decay), lr=lr)
        scheduler = CosineLRScheduler(optimizer, t_initial=phase.epochs * steps_per_epoch, lr_min=lr * 1e-2,
                                      warmup_t=int(cfg.warmup_epochs * steps_per_epoch), warmup_lr_init=lr * 1e-2,
                                      t_in_epochs=False)
        return freeze, optimizer, scheduler

    start_epoch = 0 if state is None else state["epoch"] + 1
    phase = _phase_at(phases, min(start_epoch, cfg.epochs - 1))
    freeze, optimizer, scheduler = enter(phase)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    best, best_epoch, log_rows = -1.0, -1, []
    if state is not None:
        model.load_state_dict(state["model"])
        if state["epoch"] >= phase.first_epoch:  # else the checkpoint ended the previous phase: start this one fresh
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        best, best_epoch = state["best"], state["best_epoch"]
        log_rows = list(read_json(run.path / ".train_log.json")) if (run.path / ".train_log.json").exists() else []
        card = card.model_copy(update={"source_weights": state["source_weights"]})

    train_model = torch.compile(model) if cfg.compile else model
    for epoch in range(start_epoch, cfg.epochs):
        if epoch == phase.end_epoch:
            phase = _phase_at(phases, epoch)
            freeze, optimizer, scheduler = enter(phase)
            ev.message(f"phase {phase.name}: {freeze['trainable']:,} trainable parameters at "
                       f"{cfg.lr * phase.lr_scale:g}")
        # Everything random in an epoch derives from (seed, epoch): a resumed run replays it exactly.
        seed_everything(cfg.seed + epoch)
        train_ds.transform.set_random_seed(cfg.seed + epoch)
        loader = make_loader(train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, device=device,
                             seed=cfg.seed + epoch, drop_last=len(train_ds) >= cfg.batch_size,
                             on_skip=lambda bad, epoch=epoch: skipped.add(bad, "training", epoch + 1))
        ev.epoch_start(epoch, cfg.epochs, len(loader))
        set_train_mode(model)
        stats = train_one_epoch(train_model, loader, optimizer, criterion, device, amp_dtype=amp_dtype,
                                memory_format=memory_format, scaler=scaler,
                                on_step=lambda i: (scheduler.step_update((epoch - phase.first_epoch) * steps_per_epoch + i),
                                                  ev.step(i)))
        val_loss, val_logits, val_labels = _validate(model, val_ds, cfg, device, amp_dtype, memory_format, criterion)
        val_top1 = float((val_logits.argmax(1) == val_labels).mean())
        row = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_top1": stats["top1"],
               "val_loss": val_loss, "val_top1": val_top1, "lr": optimizer.param_groups[0]["lr"],
               "epoch_seconds": stats["seconds"], "images_per_second": stats["images_per_second"], "phase": phase.name}
        log_rows.append(row)
        improved = val_top1 > best
        if improved:
            best, best_epoch = val_top1, epoch
            card = save_weights(run.weights, model, card)
        _write_log(run, log_rows)
        # Early stopping counts within the last phase only: lp-ft's probe must not end the run.
        stop = (cfg.patience is not None and phase is phases[-1]
                and epoch - max(best_epoch, phase.first_epoch - 1) >= cfg.patience)
        _save_checkpoint(run, cfg, model, optimizer, scheduler, scaler, epoch, best, best_epoch, card)
        row["best"] = improved
        ev.epoch_end(row)
        if stop:
            ev.message(f"early stop: no better val top-1 for {cfg.patience} epoch(s)")
            break

    return _finish(run, cfg, device, load_report, freeze, log_rows, best_epoch, ev)


def _phase_at(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first_epoch <= epoch < p.end_epoch)


def train_one_epoch(model, batches, optimizer, criterion, device, amp_dtype=None, memory_format=torch.contiguous_format,
                    scaler=None, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over `batches` of (images, labels); the benchmark times this same function on synthetic input."""
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(batches):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            out = model(x)
            loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # Accumulate on the device: a .item() per step would force a GPU sync every iteration.
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step + 1)
    loss_total, correct_total = loss_sum.item(), correct.item()  # one sync, at the end
    seconds = time.perf_counter() - t0
    return {"loss": loss_total / max(seen, 1), "top1": correct_total / max(seen, 1), "images": seen,
            "seconds": seconds, "images_per_second": seen / seconds if seconds else 0.0}


@torch.no_grad()
def _validate(model, ds, cfg, device, amp_dtype, memory_format, criterion):
    model.eval()
    loader = make_loader(ds, cfg.batch_size * 2, shuffle=False, workers=cfg.workers, device=device, seed=cfg.seed)
    logits, labels, loss_sum = [], [], 0.0
    for x, y in loader:
        x = x.to(device, memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            out = model(x).float()
        loss_sum += criterion(out, y.to(device)).item() * len(y)
        logits.append(out.cpu().numpy())
        labels.append(y.numpy())
    return loss_sum / len(ds), np.concatenate(logits), np.concatenate(labels)


def _write_log(run: RunDir, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run.train_log, buf.getvalue())
    write_json(run.path / ".train_log.json", rows)


def _save_checkpoint(run, cfg, model, optimizer, scheduler, scaler, epoch, best, best_epoch, card) -> None:
    state = {"config": cfg.model_dump(mode="json"), "model": _unwrap(model).state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "epoch": epoch, "best": best, "best_epoch": best_epoch, "source_weights": card.source_weights,
             "edgetl_version": __version__}
    with atomic_path(run.checkpoint) as tmp:
        torch.save(state, tmp)


def _finish(run, cfg, device, load_report, freeze, log_rows, best_epoch, ev: Events) -> RunDir:
    """Score the best checkpoint exactly as `edgetl eval` does, write metrics and plots, drop resume state."""
    from edgetl.evaluate import evaluate
    from edgetl.plots import plot_confusion, plot_curves
    from edgetl.runtime import create_backend

    train, val = read_splits(run.splits)
    with create_backend("torch", run.weights, device="cpu") as backend:
        metrics = evaluate(backend, val)
    metrics.update({
        "best_epoch": best_epoch + 1,
        "epochs_run": len(log_rows),
        "train_seconds": float(sum(r["epoch_seconds"] for r in log_rows)),
        "model": cfg.model, "strategy": cfg.strategy, "trainable_params": freeze["trainable"],
        "frozen_params": freeze["frozen"], "loaded_params": load_report.loaded_params,
        "new_params": load_report.new_params, "source_weights": load_report.source,
        "phases": _phase_summary(log_rows),
        "train_images": len(train), "device": str(device),
    })
    write_json(run.metrics, metrics)
    plot_curves(log_rows, run.curves_png)
    plot_confusion(metrics["confusion"], metrics["classes"], run.confusion_png)
    run.checkpoint.unlink(missing_ok=True)
    (run.path / ".train_log.json").unlink(missing_ok=True)
    ev.message(f"val top-1 {metrics['top1']:.4f}, macro F1 {metrics['macro_f1']:.4f} (best epoch {best_epoch + 1}) -> {cfg.out}")
    return run


def _phase_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{"phase", "first_epoch", "epochs"}] in order, from the log (1-based epochs, as in train_log.csv)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        name = r.get("phase")
        if out and out[-1]["phase"] == name:
            out[-1]["epochs"] += 1
        else:
            out.append({"phase": name, "first_epoch": r["epoch"], "epochs": 1})
    return out
