"""INT8: calibrate (one method, or all three with method auto and keep the best), write Q/DQ of one form, keep
sensitive layers float when the drop is over max_drop, check the graph's structure, write and record it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.calibration._ort import private_copy
from edgetl.card import ModelCard
from edgetl.data import ImageList
from edgetl.errors import QuantizeError
from edgetl.export.write import save_checked, sort_nodes
from edgetl.portable.forms import INT8, U8S8, form_for, int8_form
from edgetl.portable.isa import cpu_int8_isa
from edgetl.quantize.check import check_graph
from edgetl.quantize.graph import (FloatModel, default_cpu_weights, placement_summary, qdq, quantizer_settings,
                                   shape_inferred)
from edgetl.quantize.report import Int8Entry, MethodTried, OtherScoring
from edgetl.quantize.scoring import SCORING_HOW, SCORING_OF_FORM, Scorer
from edgetl.quantize.sensitivity import Quantized, exclude_sensitive
from edgetl.quantize.settings import QuantizeSettings
from edgetl.rundir import RunDir
from edgetl.stage import Events

if TYPE_CHECKING:
    import numpy as np

    from edgetl.calibration.cache import CalibrationResult

AUTO_METHODS = ("minmax", "entropy", "percentile")  # tried in this order; a tie keeps the first


SCORING_GAP_PT = 1.0  # exact and fused top-1 further apart than this get a line of their own


def calibration_set(run: RunDir, card: ModelCard, source: FloatModel, cfg: QuantizeSettings,
                    events: Events | None = None) -> tuple[ImageList, str]:
    """The calibration images and their content hash; refused when they do not fill one batch, a one-line
    warning below NVIDIA's ~500 images."""
    from edgetl.calibration import calibration_items, items_hash
    from edgetl.calibration.sampling import MIN_CALIB_IMAGES

    items = calibration_items(run, card, cfg.calib, cfg.calib_size, cfg.seed)
    batch = source.static_batch or cfg.batch_size
    if len(items) < batch:
        where = cfg.calib or "the run's train split"
        raise QuantizeError(f"{where}: the calibration set has {len(items)} image(s), fewer than one batch of {batch}",
                            "add images, raise calib_size, or lower batch_size"
                            + (" (this graph has a fixed batch: re-export with a dynamic batch)"
                               if source.static_batch else ""))
    if events is not None and len(items) < MIN_CALIB_IMAGES:
        why = (f"calib_size is {cfg.calib_size}" if cfg.calib_size is not None and cfg.calib_size < MIN_CALIB_IMAGES
               else f"{cfg.calib or 'the train split'} has no more")
        events.warning(f"calibrating on {len(items)} images ({why}); NVIDIA recommends at least "
                       f"{MIN_CALIB_IMAGES} for CNNs")
    return items, items_hash(items)


def quantize_int8(run: RunDir, card: ModelCard, source: FloatModel, scorer: Scorer, target: str,
                  calib_items: ImageList, calib_hash: str, cfg: QuantizeSettings, events: Events) -> Int8Entry:
    """Write the `target` form (RUN/model.int8.onnx or model.int8.cpu.onnx) and return its report entry."""
    from edgetl.io import sha256_file

    start = time.perf_counter()
    scoring = SCORING_OF_FORM[int8_form(target).name]  # the TensorRT form exactly, the cpu form through this CPU's kernels
    isa = cpu_int8_isa()["isa"]
    with tempfile.TemporaryDirectory(prefix="edgetl-quantize-") as scratch:
        # ONNX Runtime writes `<model>-inferred.onnx` beside the model it is given: a private copy keeps
        # two quantizations of one run (or a read-only run) from meeting there.
        base = shape_inferred(private_copy(source.path, Path(scratch)))
    calib, chosen, tried = _best_calibration(run, card, source, base, scorer, target, calib_items, calib_hash,
                                             cfg, events)
    drop = scorer.drop(chosen.top1)
    weights = default_cpu_weights() if int8_form(target) is U8S8 else "int8"
    if drop > cfg.max_drop and weights == "int8 7-bit":
        weights, chosen, drop = _try_uint8_weights(base, calib, target, chosen, scorer, drop, events)
    if drop > cfg.max_drop:
        events.message(f"drop {drop:.2f} pt > max_drop {cfg.max_drop}: measuring per-layer sensitivity")
        chosen = exclude_sensitive(base, calib, target, chosen, scorer, cfg.max_drop, events, scoring, weights)
        drop = scorer.drop(chosen.top1)
    other, other_top1, other_logits = _score_the_other_way(chosen, scorer, target, isa, events)
    out = run.onnx_for("int8", target)
    proto = sort_nodes(chosen.proto)
    card.write_onnx(proto, form_for(INT8, target))  # the graph says what it is (edgetl.portable.forms)
    summary = check_graph(proto, target)  # raises QuantizeError: nothing is written then
    save_checked(proto, out, QuantizeError, what=out.name)
    cache = calib.cache_file
    entry = Int8Entry(
        target=target, model_file=out.name, model_sha256=sha256_file(out), source_model_sha256=source.sha256,
        fp32_top1=scorer.fp32_top1, top1=chosen.top1, drop=drop, within_max_drop=drop <= cfg.max_drop,
        over_budget=drop > cfg.max_drop, max_drop=cfg.max_drop, placement=placement_summary(base, target),
        top1_agreement=scorer.agreement(chosen.logits), paired=scorer.paired(chosen.logits), scoring=scoring,
        scoring_how=SCORING_HOW[scoring].format(isa=isa), cpu_isa=isa,
        reduce_range=bool(quantizer_settings(target, weights)["reduce_range"]), weights=weights,
        other_scoring=OtherScoring(scoring=other, top1=other_top1, top1_agreement=scorer.agreement(other_logits)),
        sensitivity_images=chosen.sensitivity_images, method=calib.method, percentile=calib.percentile,
        methods_tried=tried, calib_size=calib.calib_size, calib_hash=calib.calib_hash,
        calib_source=cfg.calib or "run train split",
        calib_cache=str(cache.relative_to(run.path)) if cache.is_relative_to(run.path) else str(cache),
        excluded=chosen.excluded, sensitivity=chosen.sensitivity, eval_n=int(len(scorer.y)), eval_data=scorer.source,
        structure=summary, seconds=time.perf_counter() - start)
    events.message(f"wrote {out.name}: int8 top-1 {chosen.top1 * 100:.2f}% {scoring} (fp32 "
                   f"{scorer.fp32_top1 * 100:.2f}%, drop {drop:.2f} pt)" + (" OVER max_drop" if entry.over_budget else ""))
    return entry


def _best_calibration(run: RunDir, card: ModelCard, source: FloatModel, base, scorer: Scorer, target: str,
                      calib_items: ImageList, calib_hash: str, cfg: QuantizeSettings,
                      events: Events) -> tuple[CalibrationResult, Quantized, dict[str, MethodTried]]:
    """Calibrate with each method (all of AUTO_METHODS with method auto), score each fully quantized graph and
    keep the best: (its calibration, its graph, what each method scored)."""
    from edgetl.calibration import calibrate

    methods = AUTO_METHODS if cfg.method == "auto" else (cfg.method,)
    batch = source.static_batch or cfg.batch_size
    scoring = SCORING_OF_FORM[int8_form(target).name]
    tried: dict[str, MethodTried] = {}
    seen: dict[str, dict] = {}  # method -> its ranges, to name methods that gave identical ones
    best = None
    for method in methods:
        calib = calibrate(source.path, calib_items, card, source.input_name, method, run.calib_cache_dir, batch,
                          drop_last=source.static_batch is not None, percentile=cfg.percentile,
                          calib_hash=calib_hash, model_sha256=source.sha256, events=events)
        events.message(f"calibration {method}: {calib.calib_size} images, "
                       + ("cache hit" if calib.cache_hit else f"{calib.seconds:.1f} s") + f" ({calib.cache_file.name})")
        same = next((m for m, r in seen.items() if r == calib.ranges), None)
        seen[method] = calib.ranges
        if same is not None:  # the same ranges make the same graph: reported, not scored twice
            tried[method] = MethodTried(top1=tried[same].top1, cache_hit=calib.cache_hit, same_ranges_as=same)
            events.message(f"int8 {target} {method}: ranges identical to {same}'s, same model")
            continue
        events.status(f"scoring int8 {target} {method} ({scoring})")
        proto = qdq(base, calib, target, exclude=[])
        top1, logits = scorer.score(proto, scoring)
        tried[method] = MethodTried(top1=top1, cache_hit=calib.cache_hit)
        events.message(f"int8 {target} {method}: top-1 {top1 * 100:.2f}% ({scoring})")
        if best is None or top1 > best[1].top1:
            best = (calib, Quantized(proto, top1, logits))
    calib, chosen = best
    return calib, chosen, tried


def _try_uint8_weights(base, calib: CalibrationResult, target: str, chosen: Quantized, scorer: Scorer, drop: float,
                       events: Events) -> tuple[str, Quantized, float]:
    """ONNX Runtime's other remedy for a saturating U8S8 CPU: uint8 weights (U8U8) keep 8 bits and never
    saturate, at about 3/4 of the speed; asked for only when the fast 7-bit model misses the budget, and kept
    only when it scores higher. Returns (weights, graph, drop)."""
    scoring = SCORING_OF_FORM[int8_form(target).name]
    proto = qdq(base, calib, target, exclude=[], weights="uint8")
    top1, logits = scorer.score(proto, scoring)
    events.message(f"int8 {target} with uint8 weights (U8U8): top-1 {top1 * 100:.2f}% ({scoring}), 7-bit "
                   f"int8 weights {chosen.top1 * 100:.2f}%")
    if top1 > chosen.top1:
        chosen = Quantized(proto, top1, logits)
        return "uint8", chosen, scorer.drop(chosen.top1)
    return "int8 7-bit", chosen, drop


def _score_the_other_way(chosen: Quantized, scorer: Scorer, target: str, isa: str,
                         events: Events) -> tuple[str, float, np.ndarray]:
    """The chosen graph scored the other way (exact or fused), for comparison only: every decision used the
    form's own scoring. Warns when the two are over SCORING_GAP_PT apart."""
    scoring = SCORING_OF_FORM[int8_form(target).name]
    other = "fused" if scoring == "exact" else "exact"
    other_top1, other_logits = scorer.score(chosen.proto, other)
    gap = (chosen.top1 - other_top1) * 100
    if abs(gap) > SCORING_GAP_PT:
        events.warning(f"int8 {target} top-1 is {chosen.top1 * 100:.2f}% {scoring} but "
                       f"{other_top1 * 100:.2f}% through {SCORING_HOW['fused'].format(isa=isa)} ({abs(gap):.1f} pt "
                       f"apart)" if scoring == "exact" else
                       f"int8 {target} top-1 is {chosen.top1 * 100:.2f}% on this CPU ({isa}) but "
                       f"{other_top1 * 100:.2f}% with exact Q/DQ arithmetic ({abs(gap):.1f} pt apart): "
                       f"another CPU may score it differently")
    return other, other_top1, other_logits
