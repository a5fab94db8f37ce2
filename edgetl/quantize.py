"""`edgetl quantize`: precision baked into the ONNX graph, scored with ONNX Runtime before any engine exists.

INT8 -- explicit QuantizeLinear/DequantizeLinear (Q/DQ) written by ONNX Runtime's QDQ quantizer, in one
of two forms (each scored on its own):

  tensorrt (model.int8.onnx)      what TensorRT 10 and 11 build as a strongly typed network: int8
                                  activations and weights, symmetric (zero point 0), per-channel weights
                                  on the output-channel axis, per-tensor activations, no bias
                                  quantization, a Q/DQ pair on weights, shared Q/DQ pairs, Q/DQ only on
                                  the layer inputs TensorRT fuses (edgetl.qdq_placement: a residual Add
                                  gets its skip input only, the classifier GEMV none). These are the
                                  settings NVIDIA ModelOpt passes to this same quantizer.
  cpu      (model.int8.cpu.onnx)  uint8 activations, int8 weights (U8S8) with outputs quantized too, the
                                  pattern ONNX Runtime's x86 kernels fuse into QLinearConv/QGemm.

FP16 -- float16 body, float32 inputs and outputs, overflow-prone ops kept in float32 (an op block list).

Every written graph is topologically sorted, passes `check_graph` (zero points, per-channel axes, no dangling
float path, placement) and onnx.checker's full check (edgetl.onnx_write), and is scored against the fp32
model on the run's val split; RUN/quant_report.json keeps one entry per precision/target. A model still over
--max-drop after layer exclusion is written, marked over_budget, and raises QuantizeBudgetMissed (exit 3).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.calibration._ort import ort_names, private_copy
from edgetl.card import ModelCard
from edgetl.errors import QuantizeBudgetMissed, QuantizeError, first_line
from edgetl.io import read_json, sha256_file, write_json
from edgetl.metrics import top1 as top1_of
from edgetl.onnx_write import save_checked, sort_nodes
from edgetl.qdq_placement import POOLS, placement_problems, tensorrt_placement
from edgetl.rundir import RunDir

PRECISIONS = ("int8", "fp16")
TARGETS = ("tensorrt", "cpu")
TARGET_CHOICES = (*TARGETS, "both")
METHOD_CHOICES = ("minmax", "entropy", "percentile", "auto")
DEFAULT_MAX_DROP = 1.0
DEFAULT_BATCH = 32

# TensorRT form: the op types that may get Q/DQ on their inputs (which nodes do: edgetl.qdq_placement).
TRT_OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool"]
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move or reshape data: quantized alongside their neighbours in the cpu form, never worth
# measuring on their own, so not candidates of the sensitivity search.
DATA_MOVEMENT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "GatherElements",
                     "Slice", "Split", "Pad", "Concat", "Identity", "Where", "Resize", "QuantizeLinear",
                     "DequantizeLinear"}
QUANTIZED_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                      "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QLinearAdd"}
# FP16: ops that overflow or lose their sums in fp16 stay fp32 (reductions, softmax, normalisation
# statistics, exp/pow), plus ONNX Runtime's own list of ops without fp16 support.
FP16_BLOCK_OPS = ["ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                  "ReduceLogSumExp", "ReduceProd", "Softmax", "LogSoftmax", "LayerNormalization",
                  "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Pow", "Exp", "Sqrt",
                  "Reciprocal", "CumSum", "TopK"]
# fp16 parity: a few ulps of fp16 (2**-11 relative) per layer add up; 2% of the logit scale, and the
# top-1 class may differ only where the fp32 top-2 are this close.
FP16_REL_TOL = 0.02
FP16_MIN_AGREEMENT = 0.99


@dataclass
class QuantizeRequest:
    """Everything `quantize()` needs, resolved (the CLI fills it from options)."""

    precision: str = "int8"
    target: str = "tensorrt"
    calib: str | None = None
    calib_size: int | None = 256
    method: str = "minmax"
    percentile: float = 99.999
    data: str | None = None
    max_drop: float = DEFAULT_MAX_DROP
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    threads: int | None = None


@dataclass
class _Context:
    run: RunDir
    card: ModelCard
    model_sha256: str
    input_name: str
    static_batch: int | None
    x: np.ndarray
    y: np.ndarray
    eval_source: str
    fp32_logits: np.ndarray
    fp32_top1: float
    log: Callable[[str], None]
    threads: int | None
    scored: dict = field(default_factory=dict)


# -- entry point -----------------------------------------------------------------------------------------
def quantize(run_path: str | os.PathLike, request: QuantizeRequest | None = None,
             log: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the quantized model(s) of `request` into the run and merge their entries into
    RUN/quant_report.json. Returns {"report": path, "entries": {key: entry}}."""
    req = request or QuantizeRequest()
    log = log or (lambda _msg: None)
    _validate(req)
    run = RunDir(run_path)
    run.require(run.onnx, hint="run `edgetl export` first")
    read_report(run.path)  # a corrupt quant_report.json fails here, before any model is written
    card = ModelCard.from_onnx(run.onnx)  # a model without a card fails here, before any work
    model = _load_float_model(run.onnx)
    static_batch = _static_batch(model)
    if req.precision == "int8":  # bad calibration input fails before any scoring
        calib_items, calib_hash = _calibration_set(run, card, static_batch, req)
    ctx = _context(run, card, model, static_batch, req, log)
    entries: dict[str, dict] = {}
    if req.precision == "fp16":
        entries["fp16"] = _fp16(ctx, model, req)
        report_path = _merge_report(run, entries)
    else:
        for target in TARGETS if req.target == "both" else (req.target,):
            entries[f"int8/{target}"] = _int8(ctx, target, calib_items, calib_hash, req, progress)
            # merged per model file: if the next target fails, the report still matches what was written
            report_path = _merge_report(run, {f"int8/{target}": entries[f"int8/{target}"]})
    result = {"report": report_path, "entries": entries}
    missed = [e for e in entries.values() if e.get("over_budget")]
    if missed:  # written and recorded, but never a silent success
        raise QuantizeBudgetMissed("; ".join(_budget_line(e) for e in missed),
                                   "accept it with a higher --max-drop, or try --method auto, more --calib-size "
                                   "images, or --precision fp16", result=result)
    return result


def _budget_line(e: dict) -> str:
    what = e["precision"] if e["precision"] == "fp16" else f"int8 {e['target']}"
    tried = (f"after measuring {len(e['sensitivity'])} layer(s) and keeping {len(e['excluded'])} in float"
             if e["precision"] == "int8" else "(fp16 has no layer search)")
    return (f"{e['model_file']}: {what} top-1 {e['top1'] * 100:.2f}% is {e['drop']:.2f} pt below fp32 "
            f"{e['fp32_top1'] * 100:.2f}%, over --max-drop {e['max_drop']} {tried}; "
            f"file kept, marked over_budget in quant_report.json")


def report_key(precision: str, target: str = "tensorrt") -> str:
    """The key of a quant_report.json entry: "int8/tensorrt", "int8/cpu" or "fp16"."""
    return precision if precision != "int8" else f"int8/{target}"


def read_report(run_path: str | os.PathLike) -> dict[str, Any]:
    """RUN/quant_report.json ({"entries": {}} when absent); QuantizeError with one line if it is unreadable
    or not a quant report."""
    run = RunDir(run_path)
    if not run.quant_report.exists():
        return {"entries": {}}
    try:
        report = read_json(run.quant_report)
    except (OSError, ValueError) as e:
        raise QuantizeError(f"{run.quant_report}: not readable JSON ({first_line(e)})",
                            "move it away (edgetl quantize writes a new one) or restore it") from None
    if not isinstance(report, dict) or not isinstance(report.get("entries"), dict) or not all(
            isinstance(v, dict) for v in report["entries"].values()):
        raise QuantizeError(f"{run.quant_report}: not an edgetl quant report (no \"entries\" object)",
                            "move it away (edgetl quantize writes a new one) or restore it")
    return report


# -- checks on the inputs --------------------------------------------------------------------------------
def _validate(req: QuantizeRequest) -> None:
    if req.precision not in PRECISIONS:
        raise QuantizeError(f"--precision {req.precision}: not one of {', '.join(PRECISIONS)}",
                            "fp32 is model.onnx itself (edgetl export)")
    if req.target not in TARGET_CHOICES:
        raise QuantizeError(f"--target {req.target}: not one of {', '.join(TARGET_CHOICES)}")
    if req.method not in METHOD_CHOICES:
        raise QuantizeError(f"--method {req.method}: not one of {', '.join(METHOD_CHOICES)}")
    if req.batch_size < 1:
        raise QuantizeError(f"--batch-size {req.batch_size}: must be at least 1")
    if req.calib_size is not None and req.calib_size < 1:
        raise QuantizeError(f"--calib-size {req.calib_size}: must be at least 1")
    if not 0.0 < req.percentile <= 100.0:
        raise QuantizeError(f"--percentile {req.percentile}: must be in (0, 100]")


def _load_float_model(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise QuantizeError(f"{path}: not a readable ONNX file ({first_line(e)})", "re-run `edgetl export`") from None
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES})
    if quantized:
        raise QuantizeError(f"{path}: is already quantized (has {', '.join(quantized)} nodes)",
                            "quantize the fp32 model written by `edgetl export`, not a quantized one")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise QuantizeError(f"{path}: already has float16 weights", "quantize the fp32 model written by `edgetl export`")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise QuantizeError(f"{path}: opset {opset} is too old for per-channel Q/DQ (needs 13+)",
                            "re-export with `edgetl export --opset 17`")
    return model


def _static_batch(model) -> int | None:
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else None


def _context(run: RunDir, card: ModelCard, model, static_batch: int | None, req: QuantizeRequest, log) -> _Context:
    from edgetl.data import load_arrays, read_splits, scan_folder

    graph_input = model.graph.input[0]
    if req.data is None:
        run.require(run.splits, hint="pass --data DIR (an ImageFolder to score on)")
        _, items = read_splits(run.splits)
        source = "run val split"
    else:
        items = scan_folder(req.data, classes=card.class_names)
        source = str(req.data)
    log(f"scoring on {len(items)} images ({source})")
    x, y = load_arrays(items, card)
    ctx = _Context(run=run, card=card, model_sha256=sha256_file(run.onnx), input_name=graph_input.name,
                   static_batch=static_batch, x=x, y=y, eval_source=source, fp32_logits=np.empty(0),
                   fp32_top1=0.0, log=log, threads=req.threads)
    ctx.fp32_logits = _logits(ctx, run.onnx)
    ctx.fp32_top1 = top1_of(ctx.fp32_logits, y)
    log(f"fp32 top-1 {ctx.fp32_top1 * 100:.2f}%")
    return ctx


def _calibration_set(run: RunDir, card: ModelCard, static_batch: int | None, req: QuantizeRequest):
    from edgetl.calibration import calibration_items, items_hash

    items = calibration_items(run, card, req.calib, req.calib_size, req.seed)
    batch = static_batch or req.batch_size
    if len(items) < batch:
        where = req.calib or "the run's train split"
        raise QuantizeError(f"{where}: the calibration set has {len(items)} image(s), fewer than one batch of {batch}",
                            "add images, raise --calib-size, or lower --batch-size"
                            + (" (this graph has a fixed batch: re-export with a dynamic batch)" if static_batch else ""))
    return items, items_hash(items)


# -- int8 ------------------------------------------------------------------------------------------------
def _int8(ctx: _Context, target: str, items, calib_hash: str, req: QuantizeRequest, progress) -> dict:
    from edgetl.calibration import calibrate

    start = time.perf_counter()
    methods = ("minmax", "entropy", "percentile") if req.method == "auto" else (req.method,)
    batch = ctx.static_batch or req.batch_size
    tried: dict[str, Any] = {}
    best = None
    with tempfile.TemporaryDirectory(prefix="edgetl-quantize-") as scratch:
        # ONNX Runtime writes `<model>-inferred.onnx` beside the model it is given: a private copy keeps
        # two quantizations of one run (or a read-only run) from meeting there.
        base = _shape_inferred(private_copy(ctx.run.onnx, Path(scratch)))
    for method in methods:
        calib = calibrate(ctx.run.onnx, items, ctx.card, ctx.input_name, method, ctx.run.calib_cache_dir, batch,
                          drop_last=ctx.static_batch is not None, percentile=req.percentile, calib_hash=calib_hash,
                          model_sha256=ctx.model_sha256, progress=progress)
        ctx.log(f"calibration {method}: {calib.calib_size} images, "
                + ("cache hit" if calib.cache_hit else f"{calib.seconds:.1f} s") + f" ({calib.cache_file.name})")
        proto = _qdq(base, calib, target, exclude=[])
        top1, logits = _score_proto(ctx, proto)
        tried[method] = {"top1": top1, "cache_hit": calib.cache_hit}
        ctx.log(f"int8 {target} {method}: top-1 {top1 * 100:.2f}%")
        if best is None or top1 > best[1]:
            best = (calib, top1, proto, logits)
    calib, top1, proto, logits = best
    drop = (ctx.fp32_top1 - top1) * 100
    excluded: list[dict] = []
    sensitivity: list[dict] = []
    if drop > req.max_drop:
        ctx.log(f"drop {drop:.2f} pt > --max-drop {req.max_drop}: measuring per-layer sensitivity")
        proto, top1, logits, excluded, sensitivity = _exclude_sensitive(ctx, base, calib, target, proto, top1,
                                                                        logits, req.max_drop)
        drop = (ctx.fp32_top1 - top1) * 100
    out = ctx.run.onnx_for("int8", target)
    proto = sort_nodes(proto)
    ctx.card.write_onnx(proto)
    summary = check_graph(proto, target)  # raises QuantizeError: nothing is written then
    save_checked(proto, out, QuantizeError, what=out.name)
    entry = {
        "precision": "int8", "target": target, "model_file": out.name, "model_sha256": sha256_file(out),
        "source_model_sha256": ctx.model_sha256,
        "fp32_top1": ctx.fp32_top1, "int8_top1": top1, "top1": top1, "drop": drop,
        "within_max_drop": drop <= req.max_drop, "over_budget": drop > req.max_drop, "max_drop": req.max_drop,
        "placement": _placement_summary(base, target),
        "top1_agreement": float((logits.argmax(1) == ctx.fp32_logits.argmax(1)).mean()),
        "method": calib.method, "percentile": calib.percentile, "methods_tried": tried,
        "calib_size": calib.calib_size, "calib_hash": calib.calib_hash, "calib_source": req.calib or "run train split",
        "calib_cache": str(calib.cache_file.relative_to(ctx.run.path)) if calib.cache_file.is_relative_to(ctx.run.path) else str(calib.cache_file),
        "excluded": excluded, "sensitivity": sensitivity, "eval_n": int(len(ctx.y)), "eval_data": ctx.eval_source,
        "structure": summary, "seconds": time.perf_counter() - start,
    }
    ctx.log(f"wrote {out.name}: int8 top-1 {top1 * 100:.2f}% (fp32 {ctx.fp32_top1 * 100:.2f}%, drop {drop:.2f} pt)"
            + (" OVER --max-drop" if entry["over_budget"] else ""))
    return entry


def _placement_summary(base, target: str) -> dict[str, Any]:
    """Which rule placed or withheld Q/DQ, counted (tensorrt form), for the report."""
    if target != "tensorrt":
        return {"rule": "onnxruntime QDQ, every op it supports, outputs quantized (U8S8)"}
    plan = tensorrt_placement(base)
    count: dict[str, int] = {}
    for rule in list(plan.quantize.values()) + [f"float:{r}" for r in plan.float_nodes.values()]:
        count[rule] = count.get(rule, 0) + 1
    return {"rule": "TensorRT fusions (edgetl.qdq_placement)", "nodes": count}


def _shape_inferred(path: Path):
    """The float model with inferred shapes (ONNX Runtime's loader; it writes a file beside `path`)."""
    load_model_with_shape_infer = ort_names("onnxruntime.quantization.quant_utils", "load_model_with_shape_infer")
    try:
        model = load_model_with_shape_infer(Path(path))
    except Exception as e:
        raise QuantizeError(f"{path}: shape inference failed ({first_line(e)})") from None
    _inline_constant_identities(model)
    return model


def _inline_constant_identities(model) -> None:
    """Replace Identity(initializer) by a copy of the initializer. The torch exporter shares equal
    constants (e.g. two all-zero folded biases) through Identity nodes; the quantizer cannot see through
    them, so such biases stayed float and ONNX Runtime's CPU could not fuse those convs to QLinearConv."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs]:
        copy_ = graph.initializer.add()
        copy_.CopyFrom(inits[node.input[0]])
        copy_.name = node.output[0]
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def quantizer_settings(target: str) -> dict[str, Any]:
    """The QDQ quantizer's arguments for a target (documented in docs/quantize.md)."""
    QuantType = ort_names("onnxruntime.quantization", "QuantType")
    if target == "tensorrt":
        return dict(per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, op_types=list(TRT_OP_TYPES),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "AddQDQPairToWeight": True, "DedicatedQDQPair": False, "QuantizeBias": False,
                                   # inputs only: TensorRT places int8 outputs itself when it fuses
                                   "OpTypesToExcludeOutputQuantization": list(TRT_OP_TYPES),
                                   # MaxPool's input is quantized even where its producer's output is not
                                   "ForceQuantizeNoInputCheck": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    if target == "cpu":
        QDQRegistry = ort_names("onnxruntime.quantization.registry", "QDQRegistry")
        return dict(per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, op_types=sorted(QDQRegistry),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    raise QuantizeError(f"--target {target}: not one of {', '.join(TARGET_CHOICES)}")


def _qdq(base, calib, target: str, exclude: list[str]):
    """A fresh Q/DQ ModelProto of `base` with the calibrated ranges; `exclude` nodes stay float.

    tensorrt: ONNX Runtime quantizes the nodes edgetl.qdq_placement picks; then the Q/DQ on the convolution
    side of each residual Add is removed (the quantizer quantizes all inputs of a node or none), and nodes
    left float read float tensors.
    cpu: every op ONNX Runtime supports, except `exclude`."""
    from edgetl.calibration.methods import tensors_data

    QDQQuantizer = ort_names("onnxruntime.quantization.qdq_quantizer", "QDQQuantizer")
    s = quantizer_settings(target)
    ranges = tensors_data(calib.ranges, calib.method)
    float_inputs: dict[str, int | None] = {name: None for name in exclude}
    nodes_to_quantize: list[str] = []
    op_types = s["op_types"]
    if target == "tensorrt":
        plan = tensorrt_placement(base)
        nodes_to_quantize = [n for n in plan.quantize if n not in float_inputs]
        kinds = {n.name: n.op_type for n in base.graph.node}
        op_types = sorted({kinds[n] for n in nodes_to_quantize})
        float_inputs.update({add: k for add, k in plan.float_inputs.items() if add not in float_inputs})
        if not nodes_to_quantize:  # an empty list would mean "quantize everything" to ONNX Runtime
            return copy.deepcopy(base)
    try:  # keywords: a renamed parameter fails loudly rather than shifting the arguments
        quantizer = QDQQuantizer(model=copy.deepcopy(base), per_channel=s["per_channel"],
                                 reduce_range=s["reduce_range"], weight_qType=s["weight_type"],
                                 activation_qType=s["activation_type"], tensors_range=ranges,
                                 nodes_to_quantize=nodes_to_quantize, nodes_to_exclude=list(exclude),
                                 op_types_to_quantize=op_types, extra_options=s["extra_options"])
        quantizer.quantize_model()
    except Exception as e:
        raise QuantizeError(f"onnxruntime's quantizer failed on this graph ({first_line(e)})") from None
    proto = quantizer.model.model
    if target == "tensorrt":
        # Shared Q/DQ pairs: the quantizer routes every reader of a quantized tensor through its DQ, also
        # nodes the placement leaves float (a LayerNorm beside a ViT residual Add): they read the float tensor.
        chosen = set(nodes_to_quantize)
        float_inputs.update({n.name: None for n in proto.graph.node if n.name not in chosen
                             and n.name not in float_inputs and n.op_type not in ("QuantizeLinear", "DequantizeLinear")})
    if float_inputs:
        _float_inputs(proto, float_inputs)
    return proto


def _float_inputs(proto, inputs: dict[str, int | None]) -> None:
    """Feed node inputs from the float tensors: {node: input index, or None for all its inputs}. With shared
    Q/DQ pairs a tensor that another node still quantizes reaches them through that node's DQ. Q/DQ left
    without consumers go."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in inputs:
            continue
        for k, name in enumerate(node.input):
            if inputs[node.name] is not None and k != inputs[node.name]:
                continue
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
    while True:  # prune Q/DQ whose outputs nobody reads
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


# -- sensitivity and exclusion ---------------------------------------------------------------------------
def _exclude_sensitive(ctx: _Context, base, calib, target: str, proto, top1: float, logits, max_drop: float):
    """Leave-one-out sensitivity: for each quantized compute node (convs, GEMMs, MatMuls, and also residual
    Adds, pools and the cpu form's other quantized ops), the top-1 of the model with every node quantized
    except that one. It costs one quantization and one scoring per layer (as much as
    one-layer-at-a-time) but measures what matters here: what keeping that layer in float buys with the
    others quantized. Layers are then kept in float greedily, most sensitive first, each kept only if it
    raised top-1, until the drop is within budget or no candidate helps."""
    quantized = _quantized_nodes(proto)
    layers = [n.name for n in base.graph.node if n.op_type not in DATA_MOVEMENT_OPS and n.name in quantized]
    sensitivity = []
    for i, name in enumerate(layers):
        t1, _ = _score_proto(ctx, _qdq(base, calib, target, exclude=[name]))
        sensitivity.append({"node": name, "top1_if_float": t1, "gain": (t1 - top1) * 100})
        ctx.log(f"  sensitivity {i + 1}/{len(layers)} {name}: {(t1 - top1) * 100:+.2f} pt if kept in float")
    sensitivity.sort(key=lambda s: -s["gain"])
    excluded: list[dict] = []
    for cand in sensitivity:
        if (ctx.fp32_top1 - top1) * 100 <= max_drop or cand["gain"] <= 0:
            break
        names = [e["node"] for e in excluded] + [cand["node"]]
        trial = _qdq(base, calib, target, exclude=names)
        t1, lg = _score_proto(ctx, trial)
        if t1 > top1:
            excluded.append({"node": cand["node"], "gain": (t1 - top1) * 100, "top1_after": t1,
                             "drop_after": (ctx.fp32_top1 - t1) * 100})
            ctx.log(f"  kept {cand['node']} in float: top-1 {top1 * 100:.2f}% -> {t1 * 100:.2f}%")
            proto, top1, logits = trial, t1, lg
    if (ctx.fp32_top1 - top1) * 100 > max_drop:
        ctx.log(f"  drop still {(ctx.fp32_top1 - top1) * 100:.2f} pt after keeping {len(excluded)} layer(s) in float")
    return proto, top1, logits, excluded, sensitivity


def _quantized_nodes(proto) -> set[str]:
    """Names of the nodes that read at least one input through a DequantizeLinear."""
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    return {n.name for n in proto.graph.node if any(producers.get(i) == "DequantizeLinear" for i in n.input)}


# -- structural check ------------------------------------------------------------------------------------
def check_graph(model, target: str) -> dict[str, Any]:
    """Raise QuantizeError unless the Q/DQ graph has the form `target` needs; return a summary.

    tensorrt: every Q/DQ int8 with zero point 0, placed as TensorRT fuses (edgetl.qdq_placement: only the
    skip input of a residual Add after a convolution, no Q/DQ on a GEMV or attention MatMul, none on ops
    TensorRT fuses nothing into). cpu: weights int8 with zero point 0, activations
    uint8 or int8. Both: weight scales per channel on the output-channel axis (Conv: 0, Gemm: 0 with
    transB else 1, MatMul: 1), positive finite scales, every Q feeds only DQ, and every Conv/Gemm/MatMul
    with a DQ on one input has DQ on both (no float path left where a layer was quantized).
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems: list[str] = []

    def const(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def weight_source(dq) -> str | None:
        """The float initializer behind a DQ (directly, or through the Q of a weight Q/DQ pair)."""
        src = dq.input[0]
        if src in inits:
            return src
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:
            return q.input[0]
        return None

    n_q = n_dq = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += node.op_type == "QuantizeLinear"
        n_dq += node.op_type == "DequantizeLinear"
        scale = const(node.input[1])
        zp = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{node.name}: scale missing, non-finite or not positive")
        if zp is None:
            problems.append(f"{node.name}: no zero point (its type would default to uint8)")
            continue
        is_weight = node.op_type == "DequantizeLinear" and weight_source(node) is not None or (
            node.op_type == "QuantizeLinear" and node.input[0] in inits)
        if zp.dtype == np.int8:
            if np.any(zp != 0):
                problems.append(f"{node.name}: int8 zero point is not 0 (TensorRT needs symmetric)")
        elif zp.dtype == np.uint8 and target == "cpu" and not is_weight:
            pass  # asymmetric uint8 activations: the cpu form's U8S8
        elif zp.dtype == np.int32 and target == "cpu" and node.op_type == "DequantizeLinear" and np.all(zp == 0):
            pass  # int32 bias (scale = input scale x weight scale): the cpu form quantizes biases
        else:
            problems.append(f"{node.name}: zero point of type {zp.dtype}, "
                            + ("int8 needed" if target == "tensorrt" or is_weight else "int8 or uint8 needed"))
        if node.op_type == "QuantizeLinear":
            for c in consumers.get(node.output[0], []):
                if c.op_type != "DequantizeLinear":
                    problems.append(f"{node.name}: feeds {c.op_type} {c.name}, not a DequantizeLinear")

    quantized_layers, float_layers = [], []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OP_TYPES:
            continue
        dqs = [producer.get(i) for i in node.input[:2]]
        has = [d is not None and d.op_type == "DequantizeLinear" for d in dqs]
        if not any(has):
            float_layers.append(node.name)
            continue
        quantized_layers.append(node.name)
        if not all(has):
            problems.append(f"{node.op_type} {node.name}: DequantizeLinear on one input only (float path left)")
            continue
        wdq = dqs[1]
        w = weight_source(wdq)
        if w is None:
            continue  # activation x activation MatMul: per-tensor on both sides is right
        axis_attr = [a.i for a in wdq.attribute if a.name == "axis"]
        axis = axis_attr[0] if axis_attr else 1
        scale = const(wdq.input[1])
        shape = tuple(inits[w].dims)
        expect = _output_channel_axis(node, len(shape))
        if scale is None or scale.ndim != 1 or scale.size == 1 and shape[expect] != 1:
            problems.append(f"{node.name}: weight {w} is quantized per tensor, per-channel expected")
        elif axis % len(shape) != expect or scale.size != shape[expect]:
            problems.append(f"{node.name}: weight scales on axis {axis} ({scale.size}), expected axis {expect} "
                            f"({shape[expect]} output channels)")
    if target == "tensorrt":
        problems += placement_problems(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise QuantizeError(f"the {target} int8 graph failed its structural check: {problems[0]}{more}",
                            "this is a bug in edgetl's quantizer settings: please report it")
    def n_dq_inputs(node) -> int:
        return sum(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)

    adds = [n for n in graph.node if n.op_type == "Add" and n_dq_inputs(n)]
    return {"quantize_linear": n_q, "dequantize_linear": n_dq, "quantized_layers": len(quantized_layers),
            "float_layers": float_layers, "quantized_adds": len(adds),
            "adds_one_input_quantized": sum(n_dq_inputs(n) == 1 for n in adds),
            "quantized_pools": sum(n.op_type in POOLS and n_dq_inputs(n) > 0 for n in graph.node)}


def _output_channel_axis(node, rank: int) -> int:
    if node.op_type == "Gemm":
        trans_b = [a.i for a in node.attribute if a.name == "transB"]
        return 0 if trans_b and trans_b[0] else 1
    if node.op_type == "MatMul":
        return rank - 1
    if node.op_type == "ConvTranspose":
        return 1
    return 0


# -- fp16 ------------------------------------------------------------------------------------------------
def _fp16(ctx: _Context, model, req: QuantizeRequest) -> dict:
    start = time.perf_counter()
    proto, kept = to_fp16(model)
    proto = sort_nodes(proto)
    ctx.card.write_onnx(proto)
    out = ctx.run.onnx_for("fp16")
    entry: dict[str, Any] = {"precision": "fp16", "target": "any", "model_file": out.name,
                             "source_model_sha256": ctx.model_sha256, "fp32_top1": ctx.fp32_top1,
                             "kept_fp32_ops": kept, "excluded": [], "eval_n": int(len(ctx.y)),
                             "eval_data": ctx.eval_source, "method": None, "calib_size": None, "calib_hash": None}
    save_checked(proto, out, QuantizeError, what=out.name)
    entry["model_sha256"] = sha256_file(out)
    try:
        logits = _logits(ctx, out)
    except _CannotRun as e:
        # Say so rather than skip: the file is valid for TensorRT/CUDA, this CPU build just lacks a kernel.
        entry.update({"fp16_top1": None, "top1": None, "drop": None, "parity": None, "parity_ok": None,
                      "cpu_runnable": False, "cpu_note": f"onnxruntime on this CPU cannot run it: {e}"})
        ctx.log(f"wrote {out.name}; not scored: onnxruntime CPU cannot run it ({e})")
    else:
        top1 = top1_of(logits, ctx.y)
        delta = float(np.abs(logits - ctx.fp32_logits).max())
        scale = float(max(1.0, np.abs(ctx.fp32_logits).max()))
        agreement = float((logits.argmax(1) == ctx.fp32_logits.argmax(1)).mean())
        tol = FP16_REL_TOL * scale
        entry.update({"fp16_top1": top1, "top1": top1, "drop": (ctx.fp32_top1 - top1) * 100,
                      "within_max_drop": (ctx.fp32_top1 - top1) * 100 <= req.max_drop,
                      "over_budget": (ctx.fp32_top1 - top1) * 100 > req.max_drop, "max_drop": req.max_drop,
                      "parity": {"max_abs_logit_delta": delta, "tolerance": tol, "top1_agreement": agreement,
                                 "min_agreement": FP16_MIN_AGREEMENT},
                      "parity_ok": delta <= tol and agreement >= FP16_MIN_AGREEMENT, "cpu_runnable": True})
        ctx.log(f"wrote {out.name}: fp16 top-1 {top1 * 100:.2f}% (fp32 {ctx.fp32_top1 * 100:.2f}%), "
                f"max |delta logit| {delta:.4g} (tolerance {tol:.3g}), top-1 agreement {agreement * 100:.1f}%")
    entry["seconds"] = time.perf_counter() - start
    return entry


def to_fp16(model) -> tuple[Any, list[str]]:
    """(float16 copy of `model` with float32 inputs/outputs, op types kept in float32 that it has)."""
    DEFAULT_OP_BLOCK_LIST, convert_float_to_float16 = ort_names(
        "onnxruntime.transformers.float16", "DEFAULT_OP_BLOCK_LIST", "convert_float_to_float16")
    block = sorted(set(FP16_BLOCK_OPS) | set(DEFAULT_OP_BLOCK_LIST))
    try:
        proto = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, op_block_list=block)
    except Exception as e:
        raise QuantizeError(f"fp16 conversion failed ({first_line(e)})") from None
    _drop_repeated_casts(proto)
    _check_fp16_io(proto)
    return proto, sorted({n.op_type for n in model.graph.node if n.op_type in block})


def _drop_repeated_casts(proto) -> None:
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


def _check_fp16_io(proto) -> None:
    import onnx

    for v in list(proto.graph.input) + list(proto.graph.output):
        t = v.type.tensor_type.elem_type
        if t == onnx.TensorProto.FLOAT16:
            raise QuantizeError(f"fp16 graph has a float16 {v.name}: inputs and outputs must stay float32",
                                "this is a bug in edgetl: please report it")


# -- scoring ---------------------------------------------------------------------------------------------
class _CannotRun(Exception):
    pass


def _session(ctx: _Context, model: str | bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if ctx.threads:
        opts.intra_op_num_threads = ctx.threads
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise _CannotRun(first_line(e)) from None


def _logits(ctx: _Context, model: str | os.PathLike | bytes) -> np.ndarray:
    sess = _session(ctx, model if isinstance(model, bytes) else str(model))
    batch = ctx.static_batch or 64
    out = []
    n = len(ctx.x)
    for i in range(0, n, batch):
        xb = ctx.x[i:i + batch]
        pad = batch - len(xb) if ctx.static_batch else 0
        if pad:  # a fixed-batch graph: pad the last batch and drop the padding's logits
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
        try:
            res = sess.run(None, {ctx.input_name: xb})[0]
        except Exception as e:
            raise _CannotRun(first_line(e)) from None
        out.append(np.asarray(res, dtype=np.float32)[:len(xb) - pad])
    return np.concatenate(out)


def _score_proto(ctx: _Context, proto) -> tuple[float, np.ndarray]:
    try:
        logits = _logits(ctx, proto.SerializeToString())
    except _CannotRun as e:
        raise QuantizeError(f"onnxruntime cannot run the quantized graph ({e})") from None
    return top1_of(logits, ctx.y), logits


# -- writing ---------------------------------------------------------------------------------------------
def _merge_report(run: RunDir, entries: dict[str, dict]) -> Path:
    """Update RUN/quant_report.json, keeping the other precisions' and targets' entries."""
    from edgetl import __version__

    report = read_report(run.path)
    merged = dict(report.get("entries", {}))
    merged.update(entries)
    report = {"edgetl_version": __version__, "model": "model.onnx", "entries": merged}
    return write_json(run.quant_report, report)
