"""The training loop: epochs of optimizer steps over the train split, validation after each, the best weights and
a resume checkpoint kept as it goes. In one process or as one of several (World); everything random in an epoch
derives from (seed, epoch, rank), so a resumed run replays exactly."""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from edgetl.card import ModelCard
from edgetl.data import ImageDataset, ImageList, make_loader
from edgetl.data.skipped import SkippedImages
from edgetl.integrity import weights_digest
from edgetl.data.transforms import eval_transform, resize_size, train_transform
from edgetl.finetune.distributed import World
from edgetl.finetune.runstate import load_checkpoint, log_state, save_checkpoint, write_log
from edgetl.finetune.settings import FinetuneSettings, per_process_batch
from edgetl.io import atomic_path, read_json
from edgetl.models import (LoadReport, Phase, apply_strategy, create_model, head_parameters, param_groups,
                           set_train_mode, strategy_phases)
from edgetl.rundir import RunDir
from edgetl.stage import Events

# Offsets the seeds of ranks other than 0, so processes draw different augmentations; rank 0 keeps (seed + epoch),
# the seeds of a one-process run.
_RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """The device of a one-process run (`World.device` is the general form)."""
    return World().device(device)


def make_card(cfg: FinetuneSettings, model: nn.Module, classes: list[str], source: dict[str, Any]) -> ModelCard:
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
    """The model itself inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


@dataclass
class Trained:
    """What the loop hands to the final scoring (rank 0)."""

    load_report: LoadReport
    freeze: dict[str, int]
    log_rows: list[dict[str, Any]]
    best_epoch: int


@dataclass(frozen=True)
class ResumePlan:
    """Where training starts: its first epoch, the phase that epoch lies in, and whether the checkpoint's
    optimizer and schedule carry on (not when the checkpoint ended the previous phase: this one starts fresh)."""

    start_epoch: int
    phase: Phase
    restore_optimizer: bool


def plan_resume(phases: list[Phase], epochs: int, checkpoint_epoch: int | None) -> ResumePlan:
    """`checkpoint_epoch`: the last finished epoch (0-based) of the run resumed; None for a new run."""
    start_epoch = 0 if checkpoint_epoch is None else checkpoint_epoch + 1
    phase = _phase_at(phases, min(start_epoch, epochs - 1))
    return ResumePlan(start_epoch, phase, checkpoint_epoch is not None and checkpoint_epoch >= phase.first_epoch)


def stops_early(patience: int | None, phases: list[Phase], phase: Phase, epoch: int, best_epoch: int) -> bool:
    """Whether `patience` epochs passed without a better val top-1. It counts within the last phase only:
    lp-ft's probe must not end the run."""
    return (patience is not None and phase is phases[-1]
            and epoch - max(best_epoch, phase.first_epoch - 1) >= patience)


def backbone_lr_scale(cfg: FinetuneSettings, phases: list[Phase], from_scratch: bool) -> float:
    """A lower backbone rate protects what the source task learnt; a random backbone has nothing to protect, and
    lp-ft's fine-tuning phase runs every layer, head included, at the phase's lower rate."""
    return 1.0 if (from_scratch or len(phases) > 1) else cfg.backbone_lr_scale


def augments(cfg: FinetuneSettings, phase: Phase) -> bool:
    """A head alone on frozen features cannot learn invariance to the augmentation, only its noise: head-only
    phases see the images as evaluation (and the probe baseline) does, unless linear_augment."""
    return not (phase.strategy == "linear" and not cfg.linear_augment)


@dataclass
class _Setup:
    """What stays the same for the whole run once the model and the data are built."""

    cfg: FinetuneSettings
    run: RunDir
    world: World
    device: torch.device
    batch: int
    model: nn.Module
    phases: list[Phase]
    from_scratch: bool
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    augmented: Any
    train_ds: ImageDataset
    val_ds: ImageDataset
    skipped: SkippedImages | None
    steps_per_epoch: int


class _Optimizing(NamedTuple):
    """A phase's trainable parameters (counted), optimizer and schedule."""

    freeze: dict[str, int]
    optimizer: torch.optim.Optimizer
    scheduler: Any


def train(cfg: FinetuneSettings, run: RunDir, train_items: ImageList, val_items: ImageList, device: torch.device,
          state: dict[str, Any] | None, events: Events, world: World) -> Trained:
    batch = per_process_batch(cfg, world.size)
    seed_everything(cfg.seed)
    model, load_report, card, phases = _create_model(cfg, train_items, batch, events, world)
    setup = _set_up(cfg, run, model, card, phases, load_report, train_items, val_items, device, batch, events, world)
    resume = plan_resume(phases, cfg.epochs, None if state is None else state["epoch"])
    phase = resume.phase
    opt = _enter(setup, phase)
    scaler = torch.amp.GradScaler("cuda") if setup.amp_dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    best, best_epoch, log_rows = -1.0, -1, []
    if state is not None:
        best, best_epoch, log_rows, card = _restore(state, resume, setup.model, opt, scaler, card)

    train_model = _wrapped(setup)
    for epoch in range(resume.start_epoch, cfg.epochs):
        if epoch == phase.end_epoch:
            phase = _phase_at(phases, epoch)
            opt = _enter(setup, phase)
            train_model = None  # the previous DDP wrapper's gradient hooks go with it
            train_model = _wrapped(setup)
            events.message(f"phase {phase.name}: {opt.freeze['trainable']:,} trainable parameters at "
                           f"{cfg.lr * phase.lr_scale:g}")
        row = _train_epoch(setup, train_model, phase, opt, scaler, criterion, card, epoch, events)
        log_rows.append(row)
        improved = row["val_top1"] > best  # the same on every process: validation is gathered
        if improved:
            best, best_epoch = row["val_top1"], epoch
        stop = stops_early(cfg.patience, phases, phase, epoch, best_epoch)
        if world.is_main:
            if improved:
                card = save_weights(run.weights, setup.model, card)
            write_log(run, log_rows)
            save_checkpoint(run, cfg, setup.model, opt.optimizer, opt.scheduler, scaler, epoch, best, best_epoch,
                            card.source_weights)
        events.record("epoch", {**row, "best": improved})
        if stop:
            events.message(f"early stop: no better val top-1 for {cfg.patience} epoch(s)")
            break
    return Trained(load_report, opt.freeze, log_rows, best_epoch)


def _create_model(cfg: FinetuneSettings, train_items: ImageList, batch: int, events: Events,
                  world: World) -> tuple[nn.Module, LoadReport, ModelCard, list[Phase]]:
    """The model (the same initial weights on every process), its card and its training phases, the first
    phase's freezing applied."""
    model, load_report = world.agree(lambda: create_model(
        cfg.model, len(train_items.classes), pretrained=cfg.pretrained and cfg.weights is None, weights=cfg.weights,
        img_size=cfg.img_size))
    events.message(load_report.summary())
    card = make_card(cfg, model, train_items.classes, load_report.source)
    phases = strategy_phases(cfg.strategy, cfg.epochs, cfg.lp_epochs, cfg.backbone_lr_scale, cfg.linear_lr_scale)
    freeze = apply_strategy(model, phases[0].strategy, cfg.unfreeze)
    events.message(f"strategy {cfg.strategy}: {freeze['trainable']:,} trainable, {freeze['frozen']:,} frozen parameters"
                   + (f" for {phases[0].epochs} probe epoch(s), then every layer at {cfg.backbone_lr_scale:g} x the "
                      f"rate for {phases[1].epochs}" if len(phases) > 1 else ""))
    if world.distributed:
        events.message(f"{world.size} processes x {batch} image(s) x accumulate {cfg.accumulate} = global batch "
                       f"{cfg.batch_size} at lr {cfg.lr:g}")
    return model, load_report, card, phases


def _set_up(cfg: FinetuneSettings, run: RunDir, model: nn.Module, card: ModelCard, phases: list[Phase],
            load_report: LoadReport, train_items: ImageList, val_items: ImageList, device: torch.device, batch: int,
            events: Events, world: World) -> _Setup:
    """The model on its device in its number formats, and the datasets."""
    use_cuda = device.type == "cuda"
    amp_dtype = None
    if use_cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    memory_format = torch.channels_last if (use_cuda and cfg.channels_last) else torch.contiguous_format
    if cfg.sync_bn and world.distributed:  # (stage.check_devices refused it on the CPU)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # keeps the parameter objects, so freezing holds
    model = model.to(device, memory_format=memory_format)

    # A training image that passed the up-front check (header only, or changed since) and fails to decode is
    # skipped and listed in RUN/bad_images.json (by rank 0: one writer); val images were decoded in full by the check.
    augmented = train_transform(card, cfg.augment, seed=cfg.seed)
    train_ds = ImageDataset(train_items, augmented, skip_bad=True)
    skipped = SkippedImages(run.bad_images, events.warning) if world.is_main else None
    train_ds.check_output_size(card)
    val_ds = ImageDataset(val_items, eval_transform(card))
    steps_per_epoch = optimizer_steps(micro_batches(len(train_ds), world.size, batch), cfg.accumulate)
    from_scratch = load_report.source.get("kind") == "none"
    if from_scratch and (cfg.backbone_lr_scale != 1.0 or cfg.layer_decay is not None):
        events.message("no source weights: the backbone trains at the full learning rate")
    return _Setup(cfg, run, world, device, batch, model, phases, from_scratch, amp_dtype, memory_format, augmented,
                  train_ds, val_ds, skipped, steps_per_epoch)


def _enter(setup: _Setup, phase: Phase) -> _Optimizing:
    """Freeze per the phase; a fresh optimizer and schedule over the phase's own epochs."""
    from timm.scheduler import CosineLRScheduler

    cfg, model, steps_per_epoch = setup.cfg, setup.model, setup.steps_per_epoch
    freeze = apply_strategy(model, phase.strategy, cfg.unfreeze)
    lr = cfg.lr * phase.lr_scale
    optimizer = torch.optim.AdamW(param_groups(model, lr, cfg.weight_decay,
                                               backbone_lr_scale(cfg, setup.phases, setup.from_scratch),
                                               None if setup.from_scratch else cfg.layer_decay), lr=lr)
    # A one-step phase has nothing to anneal; at t_initial 1 timm logs a notice the user cannot act on.
    scheduler = CosineLRScheduler(optimizer, t_initial=max(phase.epochs * steps_per_epoch, 2), lr_min=lr * 1e-2,
                                  warmup_t=int(cfg.warmup_epochs * steps_per_epoch), warmup_lr_init=lr * 1e-2,
                                  t_in_epochs=False)
    return _Optimizing(freeze, optimizer, scheduler)


def _restore(state: dict[str, Any], resume: ResumePlan, model: nn.Module, opt: _Optimizing, scaler,
             card: ModelCard) -> tuple[float, int, list[dict[str, Any]], ModelCard]:
    """The checkpoint's weights (and optimizer, schedule and scaler where they carry on) into this run; its best
    so far, its log rows and its card."""
    model.load_state_dict(state["model"])
    if resume.restore_optimizer:
        opt.optimizer.load_state_dict(state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    card = card.model_copy(update={"source_weights": state["source_weights"]})
    return state["best"], state["best_epoch"], list(state.get("log_rows") or []), card


def _wrapped(setup: _Setup):
    """The model as the optimizer steps see it: DDP over what trains (so made anew per phase), compiled if asked."""
    ddp = setup.world.wrap(setup.model, setup.device)
    return torch.compile(ddp) if setup.cfg.compile else ddp


def _train_epoch(setup: _Setup, train_model, phase: Phase, opt: _Optimizing, scaler, criterion, card: ModelCard,
                 epoch: int, events: Events) -> dict[str, Any]:
    """One epoch's optimizer steps, then validation: the epoch's log row. A diverged epoch stops the run here."""
    cfg, world, device, steps_per_epoch = setup.cfg, setup.world, setup.device, setup.steps_per_epoch
    setup.train_ds.transform = setup.augmented if augments(cfg, phase) else eval_transform(card)
    skipped = setup.skipped
    loader = _train_loader(setup.train_ds, cfg, setup.batch, epoch, world, device,
                           on_skip=None if skipped is None else
                           (lambda bad, epoch=epoch: skipped.add(bad, "training", epoch + 1)))
    task = f"epoch {epoch + 1}/{cfg.epochs}"
    events.progress(task, 0, steps_per_epoch)
    set_train_mode(setup.model, freeze_bn_stats=cfg.freeze_bn_stats and not setup.from_scratch)
    base = (epoch - phase.first_epoch) * steps_per_epoch
    stats = train_one_epoch(train_model, loader, opt.optimizer, criterion, device, amp_dtype=setup.amp_dtype,
                            memory_format=setup.memory_format, scaler=scaler, accumulate=cfg.accumulate,
                            on_step=lambda i: (opt.scheduler.step_update(base + i),
                                               events.progress(task, i, steps_per_epoch)))
    stats = _sum_stats(stats, world, device)
    world.sync_buffers(setup.model)
    val_loss, val_top1 = _validate(setup.model, setup.val_ds, setup.batch * 2, cfg.workers, device, setup.amp_dtype,
                                   setup.memory_format, cfg.label_smoothing, world)
    _check_finite(stats, val_loss, epoch, cfg, setup.run, world)  # before this epoch's weights overwrite anything
    return {"epoch": epoch + 1, "train_loss": stats["loss"], "train_top1": stats["top1"],
            "val_loss": val_loss, "val_top1": val_top1, **_rates(setup.model, opt.optimizer),
            "epoch_seconds": stats["seconds"], "images_per_second": stats["images_per_second"], "phase": phase.name}


def _rates(model: nn.Module, optimizer) -> dict[str, float | None]:
    """The head's learning rate and the backbone's lowest, as the scheduler last set them."""
    head = {id(p) for p in head_parameters(model)}
    lr = [g["lr"] for g in optimizer.param_groups if any(id(p) in head for p in g["params"])]
    body = [g["lr"] for g in optimizer.param_groups if not all(id(p) in head for p in g["params"])]
    return {"lr": max(lr) if lr else optimizer.param_groups[0]["lr"], "backbone_lr": min(body) if body else None}


def _check_finite(stats: dict[str, Any], val_loss: float, epoch: int, cfg: FinetuneSettings, run: RunDir,
                  world: World) -> None:
    """A diverged run (loss nan or inf) stops here, keeping the weights and checkpoint of its last good epoch. The
    losses are sums over every process, so every process stops at the same epoch; only rank 0 says why."""
    if math.isfinite(stats["loss"]) and math.isfinite(val_loss):
        return
    from edgetl.errors import EdgetlError
    from edgetl.finetune.distributed import StoppedByPeer

    if not world.is_main:
        raise StoppedByPeer("training diverged")
    step = stats.get("first_nonfinite_step", -1)
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step >= 0 else "")
    what = (f"the training loss became {stats['loss']}" if not math.isfinite(stats["loss"])
            else f"the validation loss became {val_loss}")
    kept = (f"{run.path} keeps epoch {epoch}'s checkpoint and its best weights" if epoch else
            "no epoch finished, so nothing is kept")
    raise EdgetlError(f"training diverged at {where}: {what}; {kept}",
                      f"lower lr (now {cfg.lr:g}, try {cfg.lr / 10:g}) or warmup_epochs, and start again "
                      "(--overwrite; --resume keeps the recorded lr)")


def resume_state(run: RunDir) -> dict[str, Any]:
    """The checkpoint of the last finished epoch with the epoch rows logged so far (rank 0 reads it; the other
    processes get it from rank 0, so only rank 0 needs the run directory)."""
    state, _ = load_checkpoint(run.checkpoint)
    state["log_rows"] = list(read_json(log_state(run))) if log_state(run).exists() else []
    return state


def _phase_at(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first_epoch <= epoch < p.end_epoch)


def micro_batches(n_items: int, processes: int, batch: int) -> int:
    """Batches per process and epoch: whole batches only (one short batch when the split is smaller than one).
    DistributedSampler pads every process's share to ceil(n / processes)."""
    share = math.ceil(n_items / processes)
    return share // batch if share >= batch else 1


def optimizer_steps(micro: int, accumulate: int) -> int:
    """Optimizer steps per epoch: whole groups of `accumulate` micro-batches (one, of all of them, if fewer)."""
    return max(1, micro // accumulate)


def _epoch_seed(cfg: FinetuneSettings, epoch: int, world: World) -> int:
    return cfg.seed + epoch + world.rank * _RANK_SEED_STRIDE


def _train_loader(ds: ImageDataset, cfg: FinetuneSettings, batch: int, epoch: int, world: World,
                  device: torch.device, on_skip=None):
    seed = _epoch_seed(cfg, epoch, world)
    seed_everything(seed)
    ds.transform.set_random_seed(seed)
    sampler = None
    if world.distributed:
        from torch.utils.data.distributed import DistributedSampler

        # One permutation of the whole split per (seed, epoch), the same on every process; each takes every
        # size-th image of it. Every process gets the same number of batches, so none waits on a step the others skip.
        sampler = DistributedSampler(ds, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    n = len(ds) if sampler is None else len(sampler)
    return make_loader(ds, batch, shuffle=True, workers=cfg.workers, device=device, seed=seed, sampler=sampler,
                       drop_last=n >= batch, on_skip=on_skip)


def train_one_epoch(model, batches, optimizer, criterion, device, amp_dtype=None, memory_format=torch.contiguous_format,
                    scaler=None, on_step: Callable[[int], None] | None = None, accumulate: int = 1) -> dict[str, float]:
    """One pass over `batches` of (images, labels); the benchmark times this same function on synthetic input.

    With `accumulate` > 1, every optimizer step sums the gradients of that many micro-batches (each loss divided
    by the group's size, so the step sees the mean over the group's images); under DDP the gradients are
    all-reduced on a group's last micro-batch only (no_sync before it). A trailing incomplete group is skipped."""
    group, used = 1, None  # one micro-batch per step: `batches` may be any iterable (the benchmarks' generators)
    if accumulate > 1:
        n_micro = len(batches)
        group = accumulate if n_micro >= accumulate else max(1, n_micro)
        used = optimizer_steps(n_micro, accumulate) * group
    no_sync = getattr(model, "no_sync", None)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # the first step whose loss was nan/inf
    seen = 0
    for i, (x, y) in enumerate(batches):
        if used is not None and i >= used:
            break
        first, last = i % group == 0, (i + 1) % group == 0
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with (no_sync() if (no_sync is not None and not last) else nullcontext()):
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                out = model(x)
                loss = criterion(out, y)
            if first:
                optimizer.zero_grad(set_to_none=True)
            scaled = loss / group if group > 1 else loss
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        if last:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        # Accumulate on the device: a .item() per step would force a GPU sync every iteration.
        loss_sum += loss.detach() * len(y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i // group, first_bad)  # no sync
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if last and on_step is not None:
            on_step((i + 1) // group)
    loss_total, correct_total = loss_sum.item(), correct.item()  # one sync, at the end
    seconds = time.perf_counter() - t0
    return {"loss": loss_total / max(seen, 1), "top1": correct_total / max(seen, 1), "images": seen,
            "seconds": seconds, "images_per_second": seen / seconds if seconds else 0.0,
            "first_nonfinite_step": int(first_bad.item())}


def _sum_stats(stats: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """The epoch's training loss and top-1 over every process's images; seconds as rank 0 measured them."""
    if not world.distributed:
        return stats
    loss, correct, seen = world.sum([stats["loss"] * stats["images"], stats["top1"] * stats["images"],
                                     float(stats["images"])], device)
    return {**stats, "loss": loss / max(seen, 1), "top1": correct / max(seen, 1), "images": int(seen),
            "images_per_second": seen / stats["seconds"] if stats["seconds"] else 0.0}


@torch.no_grad()
def _validate(model, ds, batch_size, workers, device, amp_dtype, memory_format, label_smoothing,
              world: World) -> tuple[float, float]:
    """Val loss and top-1 over the whole val split. Under DDP every process scores its share (DistributedSampler,
    in order) and the logits are gathered, padding dropped, so every process gets the same two numbers: rank 0
    alone would leave the others idle, waiting in their next collective for as long as validation takes."""
    model.eval()
    sampler = None
    if world.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, num_replicas=world.size, rank=world.rank, shuffle=False)
    loader = make_loader(ds, batch_size, shuffle=False, workers=workers, device=device, seed=0, sampler=sampler)
    logits, loss_sum = [], 0.0
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    for x, y in loader:
        x = x.to(device, memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            out = model(x).float()
        if sampler is None:
            loss_sum += criterion(out, y.to(device)).item() * len(y)
        logits.append(out)
    labels_all = np.asarray(ds.items.labels)
    if sampler is None:
        scores = torch.cat(logits).cpu().numpy()
        return loss_sum / len(ds), float((scores.argmax(1) == labels_all).mean())
    indices = torch.tensor(list(sampler), dtype=torch.long, device=device)
    scores, order = world.gather_rows(torch.cat(logits), indices, len(ds))
    labels = labels_all[order]
    loss = float(criterion(torch.from_numpy(scores), torch.from_numpy(labels)))
    return loss, float((scores.argmax(1) == labels).mean())
