"""`finetune(run, cfg, events) -> FinetuneResult`: prepare the run directory, train (in one process or under
torchrun), score the best weights as `edgetl eval` does, and with baseline scratch train the from-scratch twin."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch

from edgetl.data import ImageList, check_splits, load_splits, read_splits, save_splits, test_split
from edgetl.data.skipped import SkippedImages
from edgetl.errors import EdgetlError, Interrupted, RunDirError
from edgetl.finetune.distributed import PeerLost, World, is_collective_failure
from edgetl.finetune.loop import Trained, resume_state, train
from edgetl.finetune.result import BaselineComparison, FinetuneResult, PhaseSpan
from edgetl.finetune.runstate import fresh_dir, interrupted_note, log_state, publish, resume_dir, twin_pending
from edgetl.finetune.settings import (FinetuneSettings, baseline_settings, check_plan, config_yaml, per_process_batch,
                                      read_config)
from edgetl.io import write_text
from edgetl.rundir import RunDir, check_out_and_data, lock_run
from edgetl.stage import SILENT, Events

# Where the run trains, which the resuming command decides (not the checkpoint): the hardware may have changed.
_WHERE_SETTINGS = ("device", "dist_backend", "dist_timeout")


@dataclass
class _Plan:
    """What rank 0 decided about the run directory, sent to every process."""

    work: str                     # the folder training writes: the run, or the pending sibling of an overwrite
    train: dict
    val: dict
    cfg: FinetuneSettings
    state: dict[str, Any] | None  # resume state of the last finished epoch
    created: bool                 # the folder did not exist before this call (so a failure may remove it)
    twin_only: bool               # the run finished; only its from-scratch twin was interrupted


def finetune(run: str | os.PathLike, cfg: FinetuneSettings, events: Events = SILENT, *, resume: bool = False,
             overwrite: bool = False) -> FinetuneResult | None:
    """Train per `cfg` into the run directory `run`; returns its metrics.json.

    `resume` continues an interrupted run from the checkpoint of its last finished epoch, with the settings it
    started with (`cfg` then says only where it runs: device, dist_backend, dist_timeout); `overwrite` trains a
    replacement for an existing run beside it and swaps it in only when finished. Both say what to do with the
    folder, not how to train, so they are arguments and never written to config.yaml.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 alone reads the data folder, writes the run,
    reports through `events` and returns the result; the other processes return None.
    """
    world = World.from_env()
    events = events if world.is_main else SILENT
    target = RunDir(run)
    device = world.device(cfg.device)
    # `held`: rank 0's lock on the run folder (rundir.lock_run), from before it is checked until after the swap.
    with contextlib.ExitStack() as held, world.group(device, cfg.dist_backend, cfg.dist_timeout):
        plan = world.agree(lambda: _prepare(target, cfg, resume, overwrite, device, world, events, held),
                           main_only=True)
        cfg, work = plan.cfg, RunDir(plan.work)
        train_items, val_items = ImageList.from_dict(plan.train), ImageList.from_dict(plan.val)
        try:
            if not plan.twin_only:
                trained = train(cfg, work, train_items, val_items, device, plan.state, events, world)
                if world.is_main:
                    _finish(work, cfg, device, trained, world, events, shown=target.path)
            if cfg.baseline == "scratch":
                _run_baseline(work, cfg, train_items, val_items, device, events, world)
            elif cfg.baseline == "probe" and world.is_main and not plan.twin_only:
                _run_probe(work, cfg, train_items, val_items, device, events)
        except BaseException as e:
            # A run that never finished an epoch has nothing worth keeping; later failures keep the last
            # consistent checkpoint so resume can continue. A run with metrics.json has finished (its checkpoint
            # is gone by design): a failure in its from-scratch twin must never remove it.
            if (world.is_main and plan.created and not work.checkpoint.exists() and not work.metrics.exists()
                    and work.path.exists()):
                shutil.rmtree(work.path, ignore_errors=True)
            note = interrupted_note(cfg, work, target, world.size)
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(note) from e
            if isinstance(e, PeerLost) or (world.distributed and is_collective_failure(e)):
                lost = e if isinstance(e, PeerLost) else world.lost(e)
                raise PeerLost(f"{lost.message}; {note}") from None
            raise
        if not world.is_main:
            return None
        publish(work, target)
    return FinetuneResult.read(target.metrics)


def check_devices(cfg: FinetuneSettings, device: torch.device, world: World) -> None:
    if cfg.sync_bn and world.distributed and device.type != "cuda":
        raise EdgetlError("sync_bn: SyncBatchNorm runs on CUDA devices only", "drop sync_bn on the CPU")
    per_process_batch(cfg, world.size)


def _prepare(target: RunDir, cfg: FinetuneSettings, resume: bool, overwrite: bool, device: torch.device,
             world: World, events: Events, held: contextlib.ExitStack) -> _Plan:
    """Rank 0: lock the run folder (into `held`), choose the folder, read (or re-read) the splits and the resume
    state; write config.yaml and splits.json. Everything that can refuse the run refuses it here, before a process
    trains."""
    state = None
    new = not target.path.exists()
    if not (resume and new):  # resuming a folder that does not exist fails below, creating nothing
        check_out_and_data(target.path, cfg.data)
        held.enter_context(lock_run(target.path, "finetune", create=True))
    if resume:
        work = resume_dir(target)
        if twin_pending(work):
            cfg = _where(read_config(work.config.read_text(encoding="utf-8")), cfg)
            train_items, val_items = read_splits(work.splits)
            return _Plan(str(work.path), train_items.to_dict(), val_items.to_dict(), cfg, None, False, True)
        if not work.checkpoint.exists():
            done = " (it finished: nothing to resume)" if work.metrics.exists() else ""
            raise RunDirError(f"{work.path}: no {work.checkpoint.name} to resume from{done}")
        state = resume_state(work)
        recorded = FinetuneSettings.model_validate(state["config"])
        _warn_ignored(recorded, cfg, events)
        cfg = _where(recorded, cfg)
        check_plan(cfg)
        check_devices(cfg, device, world)
        train_items, val_items = read_splits(work.splits)
        events.message(f"resuming {work.path} after epoch {state['epoch'] + 1}")
    else:
        check_plan(cfg)
        check_devices(cfg, device, world)
        bad: list = []
        work = fresh_dir(target, cfg.data, overwrite)
        train_items, val_items = load_splits(cfg.data, cfg.val_fraction, cfg.seed)
        if cfg.check != "none":
            events.message(f"checking {len(train_items) + len(val_items)} images in {cfg.data} ({cfg.check})")

        def progress(done: int, total: int) -> None:
            events.progress("checking images", done, total)

        checked = check_splits(train_items, val_items, cfg.data, cfg.check, skip_bad=cfg.skip_bad_images,
                               progress=progress, warn=events.warning)
        train_items, val_items, bad = checked.train, checked.val, checked.bad
        if checked.cached:
            events.message(f"{checked.cached} image(s) unchanged since an earlier check, {checked.checked} checked now")
        if bad:
            events.message(f"skipped {len(bad)} unreadable image(s): " + "; ".join(f"{p} ({r})" for p, r in bad[:10])
                           + (" ..." if len(bad) > 10 else ""))
    created = new if work.path == target.path else not work.path.exists()
    work.path.mkdir(parents=True, exist_ok=True)
    write_text(work.config, config_yaml(cfg, str(target.path), world.size))
    if state is None:
        save_splits(work.splits, train_items, val_items)
        if bad:
            SkippedImages(work.bad_images).add(bad, "check")  # removed with the run if it fails before an epoch ends
    return _Plan(str(work.path), train_items.to_dict(), val_items.to_dict(), cfg, state, created, False)


def _where(recorded: FinetuneSettings, given: FinetuneSettings) -> FinetuneSettings:
    return recorded.model_copy(update={k: getattr(given, k) for k in _WHERE_SETTINGS})


def _warn_ignored(recorded: FinetuneSettings, given: FinetuneSettings, events: Events) -> None:
    """A resumed run keeps its recorded recipe (its checkpoint's optimizer and schedule were made for it): a
    setting given now that differs from the record is ignored, and said to be."""
    ignored = [f"{k}={getattr(given, k)!r} (recorded {getattr(recorded, k)!r})"
               for k in sorted(given.model_fields_set - {"data", *_WHERE_SETTINGS})
               if getattr(given, k) != getattr(recorded, k)]
    if ignored:
        events.warning(f"--resume continues with the run's recorded settings; ignored: {', '.join(ignored)} "
                       "(start a new run, or --overwrite, to change them)")


def _finish(run: RunDir, cfg: FinetuneSettings, device: torch.device, trained: Trained, world: World, events: Events,
            shown) -> FinetuneResult:
    """Rank 0: score the best checkpoint exactly as `edgetl eval` does, write metrics and plots, drop resume state."""
    from edgetl.evaluate.run import evaluate
    from edgetl.plots import plot_confusion, plot_curves
    from edgetl.runtime import create_backend

    train_items, val_items = read_splits(run.splits)
    test_items = test_split(cfg.data, train_items.classes)
    with create_backend("torch", run.weights, device="cpu") as backend:
        metrics = evaluate(backend, val_items if test_items is None else test_items)
    rows = trained.log_rows
    result = FinetuneResult(
        **metrics, scored_on="val" if test_items is None else "test", best_val_top1=rows[trained.best_epoch]["val_top1"],
        best_epoch=trained.best_epoch + 1, epochs_run=len(rows),
        train_seconds=float(sum(r["epoch_seconds"] for r in rows)), model=cfg.model, strategy=cfg.strategy,
        trainable_params=trained.freeze["trainable"], frozen_params=trained.freeze["frozen"],
        loaded_params=trained.load_report.loaded_params, new_params=trained.load_report.new_params,
        source_weights=trained.load_report.source, phases=_phase_summary(rows), train_images=len(train_items),
        device=str(device), world_size=world.size)
    result.write(run.metrics)
    plot_curves(rows, run.curves_png)
    plot_confusion(result.confusion, result.classes, run.confusion_png)
    run.checkpoint.unlink(missing_ok=True)
    log_state(run).unlink(missing_ok=True)
    scored = ("scored once on test" if result.scored_on == "test"
              else "scored on val too (optimistic: give DATA/test for an unbiased score)")
    events.message(f"{result.scored_on} top-1 {result.top1:.4f}, macro F1 {result.macro_f1:.4f} (best epoch "
                   f"{result.best_epoch} chosen on val, {scored}) -> {shown}")
    return result


def _run_baseline(run: RunDir, cfg: FinetuneSettings, train_items: ImageList, val_items: ImageList,
                  device: torch.device, events: Events, world: World) -> None:
    """Train (or resume) RUN/baseline-scratch on the run's own splits, then add the gain to RUN/metrics.json."""
    twin = RunDir(run.baseline_scratch)
    twin_cfg = baseline_settings(cfg)

    def prepare() -> dict[str, Any] | None:
        state = None
        if twin.checkpoint.exists():
            state = resume_state(twin)
            events.message(f"resuming the from-scratch baseline {twin.path} after epoch {state['epoch'] + 1}")
        elif twin.path.exists():
            shutil.rmtree(twin.path)  # a twin that never finished an epoch (edgetl wrote it, inside this run)
        events.message(f"baseline: the same data, recipe and budget from scratch -> {twin.path}")
        twin.path.mkdir(parents=True, exist_ok=True)
        write_text(twin.config, config_yaml(twin_cfg, str(twin.path), world.size))
        if state is None:
            save_splits(twin.splits, train_items, val_items)
        return state

    state = world.agree(prepare, main_only=True)
    try:
        trained = train(twin_cfg, twin, train_items, val_items, device, state, events, world)
    except BaseException:
        if world.is_main and not twin.checkpoint.exists():
            shutil.rmtree(twin.path, ignore_errors=True)
        raise
    if not world.is_main:
        return
    base = _finish(twin, twin_cfg, device, trained, world, events, shown=twin.path)
    metrics = FinetuneResult.read(run.metrics)
    gain = metrics.top1 - base.top1
    metrics.baseline = BaselineComparison(kind="scratch", run=run.baseline_scratch.name, top1=base.top1,
                                          macro_f1=base.macro_f1, gain_top1=gain,
                                          gain_macro_f1=metrics.macro_f1 - base.macro_f1, negative_transfer=gain < 0)
    metrics.write(run.metrics)
    events.message(f"transfer vs from scratch: top-1 {metrics.top1:.4f} vs {base.top1:.4f} ({gain * 100:+.1f} points)")
    if gain < 0:
        events.warning(f"negative transfer: the source weights made top-1 {-gain * 100:.1f} points worse than "
                       f"training from scratch on the same data and budget")


def _run_probe(run: RunDir, cfg: FinetuneSettings, train_items: ImageList, val_items: ImageList,
               device: torch.device, events: Events) -> None:
    """Rank 0: the frozen-feature floor on the split that scored the run; its gain goes into RUN/metrics.json."""
    from edgetl.finetune.probe import linear_probe, probe_hint

    events.status("baseline: logistic regression on the source's frozen pooled features")
    test_items = test_split(cfg.data, train_items.classes)
    probe = linear_probe(cfg, train_items, val_items if test_items is None else test_items, device)
    metrics = FinetuneResult.read(run.metrics)
    gain = metrics.top1 - probe.top1
    metrics.baseline = BaselineComparison(kind="probe", top1=probe.top1, macro_f1=probe.macro_f1, gain_top1=gain,
                                          gain_macro_f1=metrics.macro_f1 - probe.macro_f1, negative_transfer=gain < 0)
    metrics.write(run.metrics)
    events.message(f"fine-tune vs a logistic regression on the frozen source features ({probe.features} each, "
                   f"{probe.seconds:.0f} s): top-1 {metrics.top1:.4f} vs {probe.top1:.4f} ({gain * 100:+.1f} points)")
    if gain < 0:
        events.warning(f"fine-tuning ended {-gain * 100:.1f} points below the frozen-feature floor: the recipe lost "
                       f"what the source knew; {probe_hint()}")


def _phase_summary(rows: list[dict[str, Any]]) -> list[PhaseSpan]:
    """The phases in order, from the log (1-based epochs, as in train_log.csv)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        name = r.get("phase")
        if out and out[-1]["phase"] == name:
            out[-1]["epochs"] += 1
        else:
            out.append({"phase": name, "first_epoch": r["epoch"], "epochs": 1})
    return [PhaseSpan(**p) for p in out]
