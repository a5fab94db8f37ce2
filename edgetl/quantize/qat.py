"""Quantization-aware training (QAT): the step after the layer search, when an int8 model still misses max_drop.

The fp32 model fine-tunes for a few epochs at a low, constant learning rate with int8 fake quantization at the
places the written graph quantizes (edgetl.quantize.fakequant), on the run's train split with its fine-tune
recipe (augmentation, label smoothing, which layers train; BatchNorm statistics frozen, because the calibrated
ranges were measured with them). Its weights are then exported to ONNX as the run's model.onnx was, and the Q/DQ
graph is written by the same quantizer and placement as the post-training one:

  tensorrt  the ranges the training used: PTQ's for the fake-quantized inputs, the QAT model's own calibration
            (same images, same method) for the Q/DQ no module carries (residual skips, pools); weight scales
            per channel from the trained weights. Scored exactly, as PTQ's.
  cpu       the U8S8 form of the trained weights with the QAT model's own calibration: its activations are
            asymmetric uint8, which the S8S8 training did not simulate, so it gains what better-conditioned
            weights give, no more. Scored through this CPU's fused kernels, as PTQ's.

The graph with the higher top-1 is kept (PTQ's on a tie is replaced: the training was asked for); both are in
the report entry's `qat` block. One training serves both forms. Ctrl-C stops it with nothing written: the
PTQ graph and its report entry stay as they were. A rerun trains again from the fp32 weights (no checkpoint:
QAT is a few epochs). One process: `edgetl quantize` is not run under torchrun.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.card import ModelCard
from edgetl.data import ImageList
from edgetl.errors import QuantizeError
from edgetl.export.write import save_checked, sort_nodes
from edgetl.portable.forms import INT8, U8S8, form_for, int8_form
from edgetl.quantize.check import check_graph
from edgetl.quantize.fakequant import Places, add_fake_quant, fake_quant_places, library_version, module_name
from edgetl.quantize.graph import FloatModel, qdq, shape_inferred
from edgetl.quantize.report import Int8Entry, OtherScoring, QatRun
from edgetl.quantize.scoring import SCORING_OF_FORM, Scorer
from edgetl.quantize.settings import QuantizeSettings
from edgetl.rundir import RunDir
from edgetl.stage import Events


@dataclass
class Trained:
    """The QAT model's float graph (in a private folder), what trained it, and the input ranges it used."""

    path: Path
    base: Any  # its shape-inferred ModelProto
    input_ranges: dict[str, tuple[float, float]]  # node of `base` -> the fixed range of its fake-quantized input
    excluded: list[str]  # PTQ's float layers, as nodes of `base`
    places: Places
    log: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 0
    train_images: int = 0
    seconds: float = 0.0
    static_batch: int | None = None  # the graph's fixed batch, as model.onnx's
    float_top1: float | None = None  # the trained weights in float, scored once


def train_qat(run: RunDir, card: ModelCard, source: FloatModel, base, entry: Int8Entry, calib_items: ImageList,
              cfg: QuantizeSettings, scratch: Path, events: Events) -> Trained:
    """Fine-tune the run's model with fake quantization where `base` (the float graph) is quantized, less the
    layers `entry` kept float, and export it to `scratch`."""
    import torch

    from edgetl.calibration import calibrate
    from edgetl.data import load_arrays
    from edgetl.models import load_trained

    start = time.perf_counter()
    calib = calibrate(source.path, calib_items, card, source.input_name, entry.method or cfg.method,
                      run.calib_cache_dir, source.static_batch or cfg.batch_size,
                      drop_last=source.static_batch is not None, percentile=cfg.percentile,
                      calib_hash=entry.calib_hash, model_sha256=source.sha256)  # PTQ's own: a cache hit
    model, torch_card = load_trained(run.weights)
    excluded = [e.node for e in entry.excluded]
    places = fake_quant_places(base, model, excluded)
    inputs = {n.name: n.input[0] for n in base.graph.node if n.input}
    ranges = {m: calib.ranges[inputs[node]] for m, node in places.modules.items() if inputs[node] in calib.ranges}
    batch = torch.from_numpy(load_arrays(calib_items.spread(cfg.batch_size), torch_card)[0])
    add_fake_quant(model, places, ranges, batch)
    events.message(f"QAT: fake quantization on {len(places.modules)} modules ({library_version()})"
                   + (f"; {len(places.unmapped)} quantized node(s) have no module and train in float"
                      if places.unmapped else ""))
    log, batch_size, n_train = _fit(model, run, torch_card, cfg, events)
    path = _export(model, card, torch_card, source, scratch)
    new_base = shape_inferred(path)
    by_module = _nodes_by_module(new_base, model)
    lost = [m for m in ranges if m not in by_module]
    if lost:  # their Q/DQ then take the QAT graph's own calibration, not the range the training used
        events.warning(f"QAT graph: {len(lost)} fake-quantized module(s) not found after export ({lost[0]}, ...)")
    trained = Trained(path=path, base=new_base, places=places, log=log, batch_size=batch_size,
                      train_images=n_train, excluded=_same_layers(excluded, base, new_base, model),
                      input_ranges={by_module[m]: r for m, r in ranges.items() if m in by_module},
                      static_batch=source.static_batch)
    trained.seconds = time.perf_counter() - start
    return trained


def _fit(model, run: RunDir, card: ModelCard, cfg: QuantizeSettings, events: Events) -> tuple[list, int, int]:
    """cfg.qat_epochs over the train split with the fine-tune's recipe: (per-epoch log, batch, images)."""
    import torch

    from edgetl.data import ImageDataset, make_loader, read_splits
    from edgetl.data.transforms import train_transform
    from edgetl.finetune.loop import resolve_device, seed_everything, train_one_epoch
    from edgetl.finetune.settings import read_config
    from edgetl.models import apply_strategy, set_train_mode, strategy_phases

    run.require(run.splits, run.config, hint="QAT trains on the run's train split with its fine-tune settings")
    ft = read_config(run.config.read_text(encoding="utf-8"))
    train_items, _ = read_splits(run.splits)
    device = resolve_device("auto")
    model.to(device)
    apply_strategy(model, strategy_phases(ft.strategy, ft.epochs, ft.lp_epochs)[-1].strategy, ft.unfreeze)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.qat_lr,
                                  weight_decay=ft.weight_decay)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=ft.label_smoothing)
    batch = min(cfg.qat_batch_size or ft.batch_size, len(train_items))
    ds = ImageDataset(train_items, train_transform(card, ft.augment, seed=ft.seed))
    log = []
    for epoch in range(cfg.qat_epochs):
        seed = ft.seed + epoch
        seed_everything(seed)
        ds.transform.set_random_seed(seed)
        loader = make_loader(ds, batch, shuffle=True, workers=ft.workers, device=device, seed=seed,
                             drop_last=len(ds) >= batch)
        task = f"QAT epoch {epoch + 1}/{cfg.qat_epochs}"
        events.progress(task, 0, len(loader))
        set_train_mode(model, freeze_bn_stats=True)
        stats = train_one_epoch(model, loader, optimizer, criterion, device,
                                on_step=lambda i, task=task, n=len(loader): events.progress(task, i, n))
        if stats["first_nonfinite_step"] >= 0:
            raise QuantizeError(f"QAT diverged in epoch {epoch + 1} (loss not finite); nothing written",
                                "lower qat_lr")
        log.append({"epoch": epoch + 1, "train_loss": round(stats["loss"], 5), "train_top1": round(stats["top1"], 5),
                    "seconds": round(stats["seconds"], 2)})
        events.message(f"QAT epoch {epoch + 1}/{cfg.qat_epochs}: loss {stats['loss']:.4f}, train top-1 "
                       f"{stats['top1'] * 100:.2f}% (fake-quantized, augmented), {stats['seconds']:.1f} s")
    model.eval().cpu()
    return log, batch, len(train_items)


def _export(model, card: ModelCard, torch_card: ModelCard, source: FloatModel, scratch: Path) -> Path:
    """The trained weights as a float graph shaped like the run's model.onnx (opset, batch, input format)."""
    from edgetl.export.run import FusedPreprocess, torch_export
    from edgetl.quantize.fakequant import remove_fake_quant

    remove_fake_quant(model)
    module = model
    if card.input_format == "uint8_nhwc":  # the graph normalises its uint8 input itself, as model.onnx does
        module = FusedPreprocess(model, torch_card).eval()
    path = scratch / "qat-fp32.onnx"
    torch_export(module, card, path, _opset(source), source.static_batch)
    return path


def _opset(source: FloatModel) -> int:
    return next(o.version for o in source.proto.opset_import if o.domain in ("", "ai.onnx"))


def _nodes_by_module(base, model) -> dict[str, str]:
    modules = dict(model.named_modules())
    found: dict[str, str] = {}
    for node in base.graph.node:
        name = module_name(node.name, modules) if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if name is not None:
            found.setdefault(name, node.name)
    return found


def _same_layers(excluded: list[str], base, new_base, model) -> list[str]:
    """PTQ's float layers (nodes of `base`) as nodes of the QAT graph: through their module where they have
    one, else by name."""
    modules = dict(model.named_modules())
    by_module = _nodes_by_module(new_base, model)
    names = {n.name for n in new_base.graph.node}
    out = []
    for node in excluded:
        m = module_name(node, modules)
        out.append(by_module[m] if m in by_module else node)
    missing = [n for n in out if n not in names]
    if missing:
        raise QuantizeError(f"QAT graph: layer(s) kept in float by PTQ not found after export: {', '.join(missing)}")
    return out


def qat_entry(run: RunDir, card: ModelCard, scorer: Scorer, entry: Int8Entry, trained: Trained,
              calib_items: ImageList, cfg: QuantizeSettings, events: Events) -> Int8Entry:
    """`entry` (PTQ, over max_drop) with its `qat` block; when the QAT graph of entry's form scores at least
    PTQ's top-1 it replaces entry.model_file and the entry's own fields describe it."""
    from edgetl.io import sha256_file
    from edgetl.quantize.graph import placement_summary

    start = time.perf_counter()
    target = entry.target
    scoring = SCORING_OF_FORM[int8_form(target).name]
    calib = _calibration(trained, card, entry, calib_items, cfg, events)
    proto = qdq(trained.base, calib, target, exclude=trained.excluded,
                weights=entry.weights if int8_form(target) is U8S8 else None)
    top1, logits = scorer.score(proto, scoring)
    drop = scorer.drop(top1)
    if trained.float_top1 is None:
        trained.float_top1 = scorer.top1(scorer.logits(trained.path))
    block = QatRun(
        library=library_version(), epochs=cfg.qat_epochs, lr=cfg.qat_lr, batch_size=trained.batch_size,
        train_images=trained.train_images, minutes=round(trained.seconds / 60, 3), train_log=trained.log,
        fake_quantized_modules=len(trained.places.modules), trained_in_float=trained.places.unmapped,
        kept=top1 >= entry.top1, ptq_top1=entry.top1, ptq_drop=entry.drop, ptq_paired=entry.paired,
        ptq_model_sha256=entry.model_sha256, top1=top1, drop=drop, top1_agreement=scorer.agreement(logits),
        paired=scorer.paired(logits), within_max_drop=drop <= cfg.max_drop, float_top1=trained.float_top1)
    events.message(f"QAT int8 {target}: top-1 {top1 * 100:.2f}% {scoring} (PTQ {entry.top1 * 100:.2f}%, fp32 "
                   f"{scorer.fp32_top1 * 100:.2f}%, drop {drop:.2f} pt; the QAT weights in float "
                   f"{trained.float_top1 * 100:.2f}%)")
    if not block.kept:
        events.message(f"kept the PTQ graph in {entry.model_file}: QAT scored lower")
        return entry.model_copy(update={"qat": block})
    proto = sort_nodes(proto)
    card.write_onnx(proto, form_for(INT8, target))  # the graph says what it is, as PTQ's does
    summary = check_graph(proto, target)  # raises QuantizeError: nothing is written then
    out = run.onnx_for("int8", target)
    save_checked(proto, out, QuantizeError, what=out.name)
    other = "fused" if scoring == "exact" else "exact"
    other_top1, other_logits = scorer.score(proto, other)
    events.message(f"wrote {out.name}: QAT int8 top-1 {top1 * 100:.2f}%"
                   + (" OVER max_drop" if drop > cfg.max_drop else " within max_drop"))
    return entry.model_copy(update=dict(
        model_sha256=sha256_file(out), top1=top1, drop=drop, within_max_drop=drop <= cfg.max_drop,
        over_budget=drop > cfg.max_drop, top1_agreement=block.top1_agreement, paired=block.paired,
        placement=placement_summary(trained.base, target), structure=summary,
        other_scoring=OtherScoring(scoring=other, top1=other_top1, top1_agreement=scorer.agreement(other_logits)),
        seconds=entry.seconds + trained.seconds + time.perf_counter() - start, qat=block))


def _calibration(trained: Trained, card: ModelCard, entry: Int8Entry, calib_items: ImageList,
                 cfg: QuantizeSettings, events: Events):
    """The QAT graph's ranges: its own calibration (PTQ's images and method), with the TensorRT form's
    fake-quantized inputs set to the ranges the training used."""
    import dataclasses

    from edgetl.calibration import calibrate

    calib = calibrate(trained.path, calib_items, card, trained.base.graph.input[0].name, entry.method or cfg.method,
                      trained.path.parent / "calib_cache", trained.static_batch or cfg.batch_size,
                      drop_last=trained.static_batch is not None, percentile=cfg.percentile,
                      calib_hash=entry.calib_hash, events=events)
    if int8_form(entry.target) is U8S8:
        return calib
    inputs = {n.name: n.input[0] for n in trained.base.graph.node if n.input}
    ranges = dict(calib.ranges)
    ranges.update({inputs[node]: r for node, r in trained.input_ranges.items()})
    return dataclasses.replace(calib, ranges=ranges)
