"""FP16: a float16 body with float32 inputs and outputs, overflow-prone ops kept in float32 (an op block list),
scored for parity with the fp32 model."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from edgetl.calibration._ort import ort_names
from edgetl.card import ModelCard
from edgetl.errors import QuantizeError, first_line
from edgetl.export.write import save_checked, sort_nodes
from edgetl.portable.forms import FP16_FORM
from edgetl.quantize.graph import FloatModel
from edgetl.quantize.report import Fp16Entry, Parity
from edgetl.quantize.scoring import CannotRun, Scorer
from edgetl.quantize.settings import QuantizeSettings
from edgetl.rundir import RunDir
from edgetl.stage import Events

# Ops that overflow or lose their sums in fp16 stay fp32 (reductions, softmax, normalisation statistics,
# exp/pow), plus ONNX Runtime's own list of ops without fp16 support.
FP16_BLOCK_OPS = ["ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                  "ReduceLogSumExp", "ReduceProd", "Softmax", "LogSoftmax", "LayerNormalization",
                  "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Pow", "Exp", "Sqrt",
                  "Reciprocal", "CumSum", "TopK"]
# fp16 parity: a few ulps of fp16 (2**-11 relative) per layer add up; 2% of the logit scale, and the
# top-1 class may differ only where the fp32 top-2 are this close.
FP16_REL_TOL = 0.02
FP16_MIN_AGREEMENT = 0.99


def quantize_fp16(run: RunDir, card: ModelCard, source: FloatModel, scorer: Scorer, cfg: QuantizeSettings,
                  events: Events) -> Fp16Entry:
    """Write RUN/model.fp16.onnx and score it against fp32 (where this CPU's ONNX Runtime can run it)."""
    from edgetl.io import sha256_file

    start = time.perf_counter()
    events.status("converting to fp16")
    proto, kept = to_fp16(source.proto)
    proto = sort_nodes(proto)
    card.write_onnx(proto, FP16_FORM)  # the graph says what it is (edgetl.portable.forms)
    out = run.onnx_for("fp16")
    save_checked(proto, out, QuantizeError, what=out.name)
    facts: dict[str, Any] = dict(model_file=out.name, model_sha256=sha256_file(out), source_model_sha256=source.sha256,
                                 fp32_top1=scorer.fp32_top1, kept_fp32_ops=kept, eval_n=int(len(scorer.y)),
                                 eval_data=scorer.source, max_drop=cfg.max_drop)
    events.status("scoring fp16")
    try:
        logits = scorer.logits(out)
    except CannotRun as e:
        # Say so rather than skip: the file is valid for TensorRT/CUDA, this CPU build just lacks a kernel.
        events.message(f"wrote {out.name}; not scored: onnxruntime CPU cannot run it ({e})")
        return Fp16Entry(**facts, top1=None, drop=None, cpu_runnable=False,
                         cpu_note=f"onnxruntime on this CPU cannot run it: {e}", seconds=time.perf_counter() - start)
    top1 = scorer.top1(logits)
    drop = scorer.drop(top1)
    delta = float(np.abs(logits - scorer.fp32_logits).max())
    scale = float(max(1.0, np.abs(scorer.fp32_logits).max()))
    agreement = scorer.agreement(logits)
    tol = FP16_REL_TOL * scale
    events.message(f"wrote {out.name}: fp16 top-1 {top1 * 100:.2f}% (fp32 {scorer.fp32_top1 * 100:.2f}%), "
                   f"max |delta logit| {delta:.4g} (tolerance {tol:.3g}), top-1 agreement {agreement * 100:.1f}%")
    return Fp16Entry(**facts, top1=top1, drop=drop, within_max_drop=drop <= cfg.max_drop,
                     over_budget=drop > cfg.max_drop,
                     parity=Parity(max_abs_logit_delta=delta, tolerance=tol, top1_agreement=agreement,
                                   min_agreement=FP16_MIN_AGREEMENT),
                     parity_ok=delta <= tol and agreement >= FP16_MIN_AGREEMENT, cpu_runnable=True,
                     paired=scorer.paired(logits),
                     seconds=time.perf_counter() - start)


def to_fp16(model) -> tuple[Any, list[str]]:
    """(float16 copy of `model` with float32 inputs/outputs, op types kept in float32 that it has)."""
    DEFAULT_OP_BLOCK_LIST, convert_float_to_float16 = ort_names(
        "onnxruntime.transformers.float16", "DEFAULT_OP_BLOCK_LIST", "convert_float_to_float16")
    block = sorted(set(FP16_BLOCK_OPS) | set(DEFAULT_OP_BLOCK_LIST))
    try:
        proto = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, op_block_list=block)
    except Exception as e:
        raise QuantizeError(f"fp16 conversion failed ({first_line(e)})") from None
    drop_repeated_casts(proto)
    check_fp16_io(proto)
    return proto, sorted({n.op_type for n in model.graph.node if n.op_type in block})


def drop_repeated_casts(proto) -> None:
    """The converter adds one Cast per use of an initializer shared with a kept-float32 op, all writing
    the same tensor name (the torch exporter shares equal constants, e.g. ConvNeXt's zero biases between
    Conv and LayerNormalization): a graph that is not single-assignment. Keep the first of each."""
    seen = set()
    for node in list(proto.graph.node):
        if node.op_type != "Cast":
            continue
        key = node.SerializeToString(deterministic=True)  # same name, input, output and type
        if key in seen:
            proto.graph.node.remove(node)
        seen.add(key)


def check_fp16_io(proto) -> None:
    """Inputs and outputs stayed float32 (what every caller of the model feeds and reads)."""
    import onnx

    for v in list(proto.graph.input) + list(proto.graph.output):
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            raise QuantizeError(f"fp16 graph has a float16 {v.name}: inputs and outputs must stay float32",
                                "this is a bug in edgetl: please report it")
