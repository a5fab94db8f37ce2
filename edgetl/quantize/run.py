"""`quantize(run, cfg, events)`: the stage, from model.onnx to the quantized model file(s) and their entries in
RUN/quant_report.json."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict

from edgetl.card import ModelCard
from edgetl.calibration._ort import private_copy
from edgetl.errors import QuantizeBudgetMissed, QuantizeError
from edgetl.portable.forms import FP16, INT8, INT8_TARGETS
from edgetl.quantize.fp16 import quantize_fp16
from edgetl.quantize.graph import load_float_model
from edgetl.quantize.fakequant import modelopt_quantization
from edgetl.quantize.int8 import calibration_set, quantize_int8
from edgetl.quantize.qat import qat_entry, train_qat
from edgetl.quantize.report import Fp16Entry, Int8Entry, QuantEntry, entry_key, merge_report, read_report
from edgetl.quantize.scoring import make_scorer
from edgetl.quantize.settings import QuantizeSettings
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, record_settings

INT8_FORMS = INT8_TARGETS  # what target "both" writes, in this order


class QuantizeResult(Result):
    """What one quantization wrote: the report file and the entries it put there (the report may hold others)."""

    report: Path
    entries: Dict[str, QuantEntry]


def quantize(run_path: str | os.PathLike, cfg: QuantizeSettings, events: Events = SILENT) -> QuantizeResult:
    """Write the quantized model(s) `cfg` asks for into the run, merge their entries into RUN/quant_report.json
    and record `cfg` in RUN/settings/quantize.yaml. A model over max_drop is written and recorded, marked
    over_budget, and raises QuantizeBudgetMissed (carrying the result)."""
    run = RunDir(run_path)
    _check_qat(cfg)
    run.require(run.onnx, hint="run `edgetl export` first")
    read_report(run.path)  # a corrupt quant_report.json fails here, before any model is written
    card = ModelCard.from_onnx(run.onnx)  # a model without a card fails here, before any work
    source = load_float_model(run.onnx)
    if cfg.precision == INT8:  # bad calibration input fails before any scoring
        calib_items, calib_hash = calibration_set(run, card, source, cfg, events)
    scorer = make_scorer(run, card, source, cfg.data, cfg.threads, events)
    entries: dict[str, Int8Entry | Fp16Entry] = {}
    if cfg.precision == FP16:
        entry = quantize_fp16(run, card, source, scorer, cfg, events)
        entries[entry_key(entry)] = entry
        report = merge_report(run.path, [entry])
    else:
        with tempfile.TemporaryDirectory(prefix="edgetl-qat-") as scratch:
            trained = None  # one QAT model serves both forms
            for target in INT8_FORMS if cfg.target == "both" else (cfg.target,):
                entry = quantize_int8(run, card, source, scorer, target, calib_items, calib_hash, cfg, events)
                if entry.over_budget and cfg.qat:
                    # PTQ's graph and entry are recorded first: an interrupted QAT leaves them consistent
                    merge_report(run.path, [entry])
                    trained = trained or _train(run, card, source, entry, calib_items, cfg, Path(scratch), events)
                    entry = qat_entry(run, card, scorer, entry, trained, calib_items, cfg, events)
                entries[entry_key(entry)] = entry
                # merged per model file: if the next target fails, the report still matches what was written
                report = merge_report(run.path, [entry])
    record_settings(run.path, "quantize", cfg)
    result = QuantizeResult(report=report, entries=entries)
    missed = [e for e in entries.values() if e.over_budget]
    if missed:  # written and recorded, but never a silent success
        raise QuantizeBudgetMissed("; ".join(_budget_line(e) for e in missed),
                                   "accept it with a higher max_drop, or try method auto, a larger calib_size, "
                                   + ("more qat_epochs" if cfg.qat else "qat (--qat)") + " or precision fp16",
                                   result=result)
    return result


def _check_qat(cfg: QuantizeSettings) -> None:
    """Refuse QAT settings that cannot run, before any work: one line each."""
    if not cfg.qat:
        return
    if cfg.precision != INT8:
        raise QuantizeError(f"qat trains for int8; precision is {cfg.precision}", "drop --qat, or use --precision int8")
    modelopt_quantization()  # not installed: one line naming the extra


def _train(run: RunDir, card: ModelCard, source, entry: Int8Entry, calib_items, cfg: QuantizeSettings,
           scratch: Path, events: Events):
    from edgetl.quantize.graph import shape_inferred

    base = shape_inferred(private_copy(source.path, scratch))
    events.message(f"{entry.model_file}: drop {entry.drop:.2f} pt still over max_drop {cfg.max_drop}: "
                   f"quantization-aware training, {cfg.qat_epochs} epoch(s) at lr {cfg.qat_lr:g}")
    return train_qat(run, card, source, base, entry, calib_items, cfg, scratch, events)


def _budget_line(e: Int8Entry | Fp16Entry) -> str:
    what = e.precision if e.precision == FP16 else f"int8 {e.target}"
    tried = (f"after measuring {len(e.sensitivity)} layer(s) and keeping {len(e.excluded)} in float"
             if isinstance(e, Int8Entry) else "(fp16 has no layer search)")
    return (f"{e.model_file}: {what} top-1 {e.top1 * 100:.2f}% is {e.drop:.2f} pt below fp32 "
            f"{e.fp32_top1 * 100:.2f}%, over max_drop {e.max_drop} {tried}; "
            f"file kept, marked over_budget in quant_report.json")
