"""Where the TensorRT form puts Q/DQ: on the inputs TensorRT fuses into int8 kernels, nowhere else.

The rules follow NVIDIA's TensorRT developer guide ("Q/DQ layer placement recommendations") and what NVIDIA
ModelOpt's ONNX INT8 quantizer does by default, in a small named form for the families edgetl tests
(ResNet, MobileNetV3, EfficientNet, ConvNeXt, ViT):

  conv_input       Conv/ConvTranspose: input and weight quantized (TensorRT's int8 convolution), unless the
                   conv is one TensorRT has no int8 kernel for (`tiny_conv`, ModelOpt's channel rule).
  weight_matmul    Gemm/MatMul with a weight: input and weight quantized, unless `gemv`.
  gemv             a Gemm/MatMul whose activation is 2-D ([batch, features]: the classifier head) runs as a
                   matrix-vector product at batch 1; ModelOpt leaves it in float (no tensor-core gain, the Q/DQ
                   only cost time).
  attention        MatMul of two activations (ViT's Q.K^T and attention.V): float, as ModelOpt keeps the
                   multi-head-attention core out of int8.
  residual_add     an Add where one input comes from a convolution through its fusible epilogue (bias,
                   BatchNorm, ReLU/Clip, SiLU, HardSwish) and the other is the skip path: only the skip input is
                   quantized, so TensorRT fuses the Add into that convolution. When both inputs come from convs
                   (a ResNet downsample block), the one on the longer path from the common ancestor is the
                   convolution's own output.
  add              any other Add of two activations (ViT's residual joins, whose sides end in MatMul+bias):
                   both inputs quantized, as ModelOpt does.
  pool             MaxPool/AveragePool/GlobalAveragePool: input quantized (int8 pooling).

Everything else stays float: normalisation (LayerNormalization, the ops of a decomposed norm), GELU/Erf,
Softmax, Sigmoid/HardSigmoid/HardSwish, the squeeze-excite gate Mul and ReduceMean, reshapes. ModelOpt also
quantizes the feature input of a squeeze-excite gate Mul in some patterns; edgetl does not (the next
convolution quantizes that tensor anyway).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
# Ops TensorRT fuses into the convolution that precedes them (its epilogue).
_EPILOGUE = {"Relu", "Clip", "LeakyRelu", "BatchNormalization", "HardSwish", "Sigmoid", "Identity"}
# Seen through when reading an already quantized graph (check_graph): they change no topology.
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Placement:
    """What ONNX Runtime's quantizer is asked to quantize, and the Q/DQ removed afterwards."""

    quantize: dict[str, str] = field(default_factory=dict)  # node name -> rule that quantizes it
    float_nodes: dict[str, str] = field(default_factory=dict)  # candidate node name -> rule keeping it float
    float_inputs: dict[str, int] = field(default_factory=dict)  # residual Add -> index of its conv-side input


class _Graph:
    def __init__(self, model):
        g = model.graph
        self.nodes = list(g.node)
        self.consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in g.node for o in n.output}
        self.rank = {}
        for v in list(g.input) + list(g.value_info) + list(g.output):
            t = v.type.tensor_type
            if t.HasField("shape"):
                self.rank[v.name] = len(t.shape.dim)
        self.inputs = {i.name for i in g.input}
        self.dims = {t.name: tuple(t.dims) for t in g.initializer}

    def variable_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.consts]

    def parent(self, tensor: str):
        return self.producer.get(tensor)

    def float_source(self, tensor: str) -> str:
        """The tensor behind any Q/DQ chain (itself in a float graph)."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in _QDQ:
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor

    def is_dequantized(self, tensor: str) -> bool:
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear"


def tensorrt_placement(model) -> Placement:
    """The Q/DQ placement of the TensorRT form for a float (shape-inferred) ModelProto."""
    g = _Graph(model)
    plan = Placement()
    for node in g.nodes:
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            why_not = _tiny_conv(g, node) if op == "Conv" else None
            _decide(plan, node.name, "conv_input", why_not)
        elif op in ("Gemm", "MatMul"):
            kind = _matmul_kind(g, node)
            if kind == "weight_matmul":
                plan.quantize[node.name] = kind
            elif kind:
                plan.float_nodes[node.name] = kind
        elif op in POOLS:
            plan.quantize[node.name] = "pool"
        elif op == "Add" and len(g.variable_inputs(node)) == 2 and len(node.input) == 2:
            conv_side = _conv_side(g, node)
            plan.quantize[node.name] = "add" if conv_side is None else "residual_add"
            if conv_side is not None:
                plan.float_inputs[node.name] = conv_side
    return plan


def placement_problems(model) -> list[str]:
    """What in a quantized TensorRT-form graph breaks the placement rules above (empty: none)."""
    g = _Graph(model)
    problems = []
    for node in g.nodes:
        dq_inputs = [k for k, i in enumerate(node.input) if i and g.is_dequantized(i)]
        if not dq_inputs or node.op_type in _QDQ:
            continue
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", *POOLS):
            problems.append(f"{node.op_type} {node.name}: Q/DQ on its input, where TensorRT fuses none")
        elif node.op_type in ("Gemm", "MatMul") and _matmul_kind(g, node) in ("gemv", "attention"):
            problems.append(f"{node.op_type} {node.name}: quantized, but a {_matmul_kind(g, node)} stays float")
        elif node.op_type == "Add" and len(node.input) == 2:
            side = _conv_side(g, node)
            if side is not None and side in dq_inputs:
                problems.append(f"residual Add {node.name}: Q/DQ on the convolution's own output (input "
                                f"{side}) keeps TensorRT from fusing the Add into that convolution")
    return problems


def _matmul_kind(g: _Graph, node) -> str | None:
    """weight_matmul, gemv or attention for a Gemm/MatMul (None if it reads no activation)."""
    var = [g.float_source(i) for i in node.input[:2] if i and g.float_source(i) not in g.consts]
    if len(var) >= 2:
        return "attention"
    if not var:
        return None
    return "gemv" if g.rank.get(var[0]) == 2 else "weight_matmul"


def _decide(plan: Placement, name: str, rule: str, why_not: str | None) -> None:
    if why_not:
        plan.float_nodes[name] = why_not
    else:
        plan.quantize[name] = rule


def _tiny_conv(g: _Graph, node) -> str | None:
    """ModelOpt's int8 rule: a conv with fewer than 16 input or output channels has a TensorRT int8 kernel
    only if it is a plain conv with 8-aligned channels and a square kernel (and is the first layer or has 16+
    channels on one side), or a grouped conv with 8-aligned outputs and a kernel of 3 or more."""
    dims = g.dims.get(node.input[1]) if len(node.input) > 1 else None
    if dims is None:
        return "tiny_conv"  # a weight that is not a constant: no int8 conv kernel either
    out_ch, in_ch = dims[0], dims[1]
    if out_ch >= 16 and in_ch >= 16:
        return None
    attrs = {a.name: a for a in node.attribute}
    group = attrs["group"].i if "group" in attrs else 1
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else list(dims[2:])
    if group == 1 and (out_ch % 8 == 0 or in_ch % 8 == 0) and len(set(kernel)) == 1 and (
            node.input[0] in g.inputs or out_ch >= 16 or in_ch >= 16):
        return None
    if group > 1 and out_ch % 8 == 0 and all(k >= 3 for k in kernel):
        return None
    return "tiny_conv"


def _conv_backbone(g: _Graph, tensor: str):
    """The Conv whose output reaches `tensor` through ops TensorRT fuses into it, or None."""
    node = g.parent(tensor)
    for _ in range(16):  # an epilogue is a few ops long (and Q/DQ pairs in a quantized graph)
        if node is None:
            return None
        if node.op_type in ("Conv", "ConvTranspose"):
            return node
        var = g.variable_inputs(node)
        if node.op_type in _QDQ:
            node = g.parent(node.input[0])
        elif node.op_type in _EPILOGUE and len(var) == 1:
            node = g.parent(var[0])
        elif node.op_type in ("Add", "Mul", "Sub", "Div") and len(var) == 1:  # bias, scale
            node = g.parent(var[0])
        elif node.op_type == "Mul" and len(var) == 2:  # SiLU: x * Sigmoid(x)
            a, b = (g.parent(v) for v in var)
            if b is not None and b.op_type == "Sigmoid" and b.input[0] == var[0]:
                node = a
            elif a is not None and a.op_type == "Sigmoid" and a.input[0] == var[1]:
                node = b
            else:
                return None
        else:
            return None
    return None


def _distances(g: _Graph, tensor: str) -> dict[str, int]:
    """Node name -> fewest nodes between it and `tensor`, going up the graph (its producer is 0). Q/DQ nodes
    are stepped over, never visited: a quantized graph then measures exactly as its float original (a
    shared Q/DQ after a branch point must not become the meeting point of two paths)."""
    out: dict[str, int] = {}
    first = g.parent(g.float_source(tensor))
    tie = itertools.count()  # heap order never compares two nodes
    heap = [] if first is None else [(0, next(tie), first)]
    while heap:
        d, _, node = heapq.heappop(heap)
        if node.name in out:
            continue
        out[node.name] = d
        for i in g.variable_inputs(node):
            parent = g.parent(g.float_source(i))
            if parent is not None and parent.name not in out:
                heapq.heappush(heap, (d + 1, next(tie), parent))
    return out


def _conv_side(g: _Graph, add) -> int | None:
    """Index of the input of `add` that is a convolution's own output (to stay unquantized), or None when
    the Add is not a residual join after a convolution."""
    a, b = add.input[0], add.input[1]
    bb = [_conv_backbone(g, a), _conv_backbone(g, b)]
    if bb[0] is None and bb[1] is None:
        return None
    da, db = _distances(g, a), _distances(g, b)
    common = set(da) & set(db)
    lca = min(common, key=lambda n: (da[n] + db[n], n)) if common else None
    if bb[0] is not None and bb[1] is not None:
        if bb[0].name == bb[1].name:
            return None
        if lca is None:
            return 0
        return 0 if da[lca] > db[lca] else 1
    side = 0 if bb[0] is not None else 1
    if lca is not None and lca == bb[side].name:
        return None  # conv -> add and conv -> ... -> add: the conv's output is the skip path (ConvNeXt-like)
    return side
