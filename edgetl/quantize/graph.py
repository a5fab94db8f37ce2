"""Graph surgery: the float model as quantize reads it, and the Q/DQ graph ONNX Runtime's quantizer writes of it
(with the placement edgetl.quantize.placement picks for the TensorRT form)."""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.calibration._ort import ort_names
from edgetl.errors import QuantizeError, first_line
from edgetl.portable.forms import S8S8, U8S8, int8_form
from edgetl.quantize.placement import tensorrt_placement

# TensorRT form: the op types that may get Q/DQ on their inputs (which nodes do: edgetl.quantize.placement).
TRT_OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool"]
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move or reshape data: quantized alongside their neighbours in the cpu form, never worth
# measuring on their own, so not candidates of the sensitivity search.
DATA_MOVEMENT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "GatherElements",
                     "Slice", "Split", "Pad", "Concat", "Identity", "Where", "Resize", "QuantizeLinear",
                     "DequantizeLinear"}
QUANTIZED_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                      "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QLinearAdd"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# -- the float model ---------------------------------------------------------------------------------------
@dataclass
class FloatModel:
    """model.onnx as quantize reads it."""

    path: Path
    proto: Any
    sha256: str  # recorded in each entry as source_model_sha256 (and in the calibration cache key)
    input_name: str
    static_batch: int | None  # the graph's fixed batch, None when dynamic


def load_float_model(path: Path) -> FloatModel:
    """model.onnx, refused with one line unless it is a float32 graph quantize can work on."""
    import onnx

    from edgetl.io import sha256_file

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
    return FloatModel(path=Path(path), proto=model, sha256=sha256_file(path), input_name=model.graph.input[0].name,
                      static_batch=static_batch(model))


def static_batch(model) -> int | None:
    """The graph's fixed batch size, or None for a dynamic batch."""
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else None


def shape_inferred(path: Path):
    """The float model with inferred shapes (ONNX Runtime's loader; it writes a file beside `path`)."""
    load_model_with_shape_infer = ort_names("onnxruntime.quantization.quant_utils", "load_model_with_shape_infer")
    try:
        model = load_model_with_shape_infer(Path(path))
    except Exception as e:
        raise QuantizeError(f"{path}: shape inference failed ({first_line(e)})") from None
    inline_constant_identities(model)
    return model


def inline_constant_identities(model) -> None:
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


# -- Q/DQ --------------------------------------------------------------------------------------------------
# The cpu form's weight formats. ONNX Runtime's x86 U8S8 kernels without VNNI add pairs of u8 x s8 products into a
# saturating int16 (vpmaddubsw): 255 * 127 * 2 overflows it. ONNX Runtime documents two remedies, and they trade
# differently (EfficientNet-Lite0, docs/BENCHMARKS.md): 7-bit weights keep the U8S8 speed but lose precision;
# uint8 weights (U8U8) never saturate and keep 8 bits, at about 3/4 of the speed.
CPU_WEIGHTS = ("int8", "int8 7-bit", "uint8")


def default_cpu_weights() -> str:
    """The cpu form's first choice on this CPU: 7-bit where U8S8 saturates (fast), else full int8."""
    from edgetl.portable.isa import cpu_int8_isa

    return "int8 7-bit" if cpu_int8_isa()["int8_saturates"] else "int8"


def quantizer_settings(target: str, weights: str | None = None) -> dict[str, Any]:
    """The QDQ quantizer's arguments for a target (documented in docs/quantize.md); `weights` (cpu form, one
    of CPU_WEIGHTS) defaults to default_cpu_weights()."""
    QuantType = ort_names("onnxruntime.quantization", "QuantType")
    if int8_form(target) is S8S8:
        return dict(per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, op_types=list(TRT_OP_TYPES),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "AddQDQPairToWeight": True, "DedicatedQDQPair": False, "QuantizeBias": False,
                                   # inputs only: TensorRT places int8 outputs itself when it fuses
                                   "OpTypesToExcludeOutputQuantization": list(TRT_OP_TYPES),
                                   # MaxPool's input is quantized even where its producer's output is not
                                   "ForceQuantizeNoInputCheck": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    if int8_form(target) is U8S8:
        weights = weights or default_cpu_weights()
        if weights not in CPU_WEIGHTS:
            raise QuantizeError(f"cpu weights '{weights}': not one of {', '.join(CPU_WEIGHTS)}")
        QDQRegistry, QLinearOpsRegistry = ort_names("onnxruntime.quantization.registry", "QDQRegistry",
                                                    "QLinearOpsRegistry")
        return dict(per_channel=True, reduce_range=weights == "int8 7-bit",  # 255 * 64 * 2 fits an int16
                    weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                    # both registries, as quantize_static does: with QDQRegistry alone, Add, Mul and
                    # GlobalAveragePool kept float outputs, so the last residual block and the pool ran in
                    # float and Relus after Adds stayed (resnet18 96 px: x2.08 vs quantize_static's x2.63)
                    op_types=sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": weights != "uint8",
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    raise QuantizeError(f"target '{target}': no int8 form of that name (tensorrt or cpu)")


def qdq(base, calib, target: str, exclude: list[str], weights: str | None = None):
    """A fresh Q/DQ ModelProto of `base` with the calibrated ranges; `exclude` nodes stay float.

    tensorrt: ONNX Runtime quantizes the nodes edgetl.quantize.placement picks; then the Q/DQ on the convolution
    side of each residual Add is removed (the quantizer quantizes all inputs of a node or none), and nodes
    left float read float tensors.
    cpu: every op ONNX Runtime supports, except `exclude`, with `weights` (CPU_WEIGHTS)."""
    from edgetl.calibration.methods import tensors_data

    QDQQuantizer = ort_names("onnxruntime.quantization.qdq_quantizer", "QDQQuantizer")
    s = quantizer_settings(target, weights)
    ranges = tensors_data(calib.ranges, calib.method)
    float_inputs: dict[str, int | None] = {name: None for name in exclude}
    nodes_to_quantize: list[str] = []
    op_types = s["op_types"]
    if int8_form(target) is S8S8:
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
        with quiet_logging():  # uint8 weights: ONNX Runtime logs each int32 bias it clips (the score shows it)
            quantizer.quantize_model()
    except Exception as e:
        raise QuantizeError(f"onnxruntime's quantizer failed on this graph ({first_line(e)})") from None
    proto = quantizer.model.model
    if int8_form(target) is S8S8:
        # Shared Q/DQ pairs: the quantizer routes every reader of a quantized tensor through its DQ, also
        # nodes the placement leaves float (a LayerNorm beside a ViT residual Add): they read the float tensor.
        chosen = set(nodes_to_quantize)
        float_inputs.update({n.name: None for n in proto.graph.node if n.name not in chosen
                             and n.name not in float_inputs and n.op_type not in QDQ_OPS})
    if float_inputs:
        float_inputs_of(proto, float_inputs)
    return proto


@contextlib.contextmanager
def quiet_logging():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def float_inputs_of(proto, inputs: dict[str, int | None]) -> None:
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
            activation = _quantized_activation(producer, name)
            if activation is not None:
                node.input[k] = activation
    _prune_qdq(graph)


def _quantized_activation(producer: dict, tensor: str) -> str | None:
    """The float tensor behind `tensor` when it is DequantizeLinear(QuantizeLinear(float)), else None."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def float_node(proto, base, name: str):
    """A copy of `proto` (a Q/DQ graph of `base`) in which node `name` computes in float: its activations read
    the float tensors and its weights `base`'s float initializers. What quantizing with `name` excluded gives,
    without running the quantizer again for each of the sensitivity scan's layers."""
    out = copy.deepcopy(proto)
    graph = out.graph
    node = next(n for n in graph.node if n.name == name)
    source = next(n for n in base.graph.node if n.name == name)
    producer = {o: n for n in graph.node for o in n.output}
    have = {t.name for t in graph.initializer}
    floats = {t.name: t for t in base.graph.initializer}
    for k, tensor in enumerate(node.input):
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        activation = _quantized_activation(producer, tensor)
        if activation is not None:
            node.input[k] = activation
        elif k < len(source.input) and source.input[k] in floats:  # a quantized weight or bias
            # ONNX Runtime names a quantized bias's DequantizeLinear output after the float bias: rename that one
            name_float = source.input[k] if source.input[k] != tensor else f"{tensor}_float"
            node.input[k] = name_float
            if name_float not in have:
                init = copy.deepcopy(floats[source.input[k]])
                init.name = name_float
                graph.initializer.append(init)
                have.add(name_float)
    # An output the quantizer quantized for the graph's output alone (the cpu form's last Gemm) stays float too
    outputs = {o.name for o in graph.output}
    for j, tensor in enumerate(node.output):
        q = [n for n in graph.node if tensor in n.input]
        dq = [n for n in graph.node if q and q[0].output[0] in n.input]
        if (len(q) == 1 and q[0].op_type == "QuantizeLinear" and len(dq) == 1 and dq[0].op_type == "DequantizeLinear"
                and dq[0].output[0] in outputs and not any(dq[0].output[0] in n.input for n in graph.node)):
            node.output[j] = dq[0].output[0]
            graph.node.remove(q[0])
            graph.node.remove(dq[0])
    _prune_qdq(graph)
    return out


def _prune_qdq(graph) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads, then initializers nobody reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def quantized_nodes(proto) -> set[str]:
    """Names of the nodes that read at least one input through a DequantizeLinear."""
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    return {n.name for n in proto.graph.node if any(producers.get(i) == "DequantizeLinear" for i in n.input)}


def placement_summary(base, target: str) -> dict[str, Any]:
    """Which rule placed or withheld Q/DQ, counted (tensorrt form), for the report."""
    if int8_form(target) is not S8S8:
        return {"rule": "onnxruntime QDQ, every op it supports, outputs quantized (U8S8)"}
    plan = tensorrt_placement(base)
    count: dict[str, int] = {}
    for rule in list(plan.quantize.values()) + [f"float:{r}" for r in plan.float_nodes.values()]:
        count[rule] = count.get(rule, 0) + 1
    return {"rule": "TensorRT fusions (edgetl.quantize.placement)", "nodes": count}


def output_channel_axis(node, rank: int) -> int:
    """The axis of a weighted node's weight that holds its output channels (where per-channel scales go)."""
    if node.op_type == "Gemm":
        trans_b = [a.i for a in node.attribute if a.name == "transB"]
        return 0 if trans_b and trans_b[0] else 1
    if node.op_type == "MatMul":
        return rank - 1
    if node.op_type == "ConvTranspose":
        return 1
    return 0
