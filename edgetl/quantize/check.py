"""The structural check every written Q/DQ graph passes: one named check per rule, each returning the problems it
found; `check_graph` runs those its target needs and refuses the graph on the first problem.

tensorrt: every Q/DQ int8 with zero point 0, placed as TensorRT fuses (edgetl.quantize.placement: only the skip input
of a residual Add after a convolution, no Q/DQ on a GEMV or attention MatMul, none on ops TensorRT fuses nothing
into). cpu: weights int8 with zero point 0 (or uint8: U8U8), activations uint8 or int8. Both: weight scales per channel on the
output-channel axis (Conv: 0, Gemm: 0 with transB else 1, MatMul: 1), positive finite scales, every Q feeds only
DQ, and every Conv/Gemm/MatMul with a DQ on one input has DQ on both (no float path left where a layer was
quantized).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgetl.errors import QuantizeError
from edgetl.portable.forms import S8S8, U8S8, int8_form
from edgetl.quantize.placement import POOLS, placement_problems
from edgetl.quantize.graph import QDQ_OPS, WEIGHTED_OP_TYPES, output_channel_axis
from edgetl.quantize.report import GraphSummary


class QdqGraph:
    """A Q/DQ graph as who-produces-what, with the lookups the checks share."""

    def __init__(self, model):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> np.ndarray | None:
        """An initializer's or a Constant node's value."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def weight_source(self, dq) -> str | None:
        """The float initializer behind a DQ (directly, or through the Q of a weight Q/DQ pair)."""
        src = dq.input[0]
        if src in self.inits:
            return src
        q = self.producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in self.inits:
            return q.input[0]
        return None

    def is_dq(self, tensor: str) -> bool:
        p = self.producer.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear"

    def dq_inputs(self, node) -> int:
        return sum(self.is_dq(i) for i in node.input)

    def qdq_nodes(self) -> list:
        return [n for n in self.nodes if n.op_type in QDQ_OPS]

    def weighted_layers(self) -> list:
        return [n for n in self.nodes if n.op_type in WEIGHTED_OP_TYPES]

    def is_quantized_layer(self, node) -> bool:
        return any(self.is_dq(i) for i in node.input[:2])


# -- the checks --------------------------------------------------------------------------------------------
def scales_positive(g: QdqGraph, target: str) -> list[str]:
    """Every Q/DQ has a finite, positive scale."""
    problems = []
    for node in g.qdq_nodes():
        scale = g.const(node.input[1])
        if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{node.name}: scale missing, non-finite or not positive")
    return problems


def zero_points_of_the_form(g: QdqGraph, target: str) -> list[str]:
    """Zero points given explicitly, int8 and 0 (symmetric) wherever the target needs it: everywhere for
    tensorrt; for cpu, activations (and U8U8 weights) may be asymmetric uint8 and biases int32."""
    problems = []
    for node in g.qdq_nodes():
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            problems.append(f"{node.name}: no zero point (its type would default to uint8)")
            continue
        is_weight = node.op_type == "DequantizeLinear" and g.weight_source(node) is not None or (
            node.op_type == "QuantizeLinear" and node.input[0] in g.inits)
        if zp.dtype == np.int8:
            if np.any(zp != 0):
                problems.append(f"{node.name}: int8 zero point is not 0 (TensorRT needs symmetric)")
        elif zp.dtype == np.uint8 and int8_form(target) is U8S8:
            pass  # asymmetric uint8 activations, and weights in the U8U8 variant (x86 without VNNI)
        elif zp.dtype == np.int32 and int8_form(target) is U8S8 and node.op_type == "DequantizeLinear" and np.all(zp == 0):
            pass  # int32 bias (scale = input scale x weight scale): the cpu form quantizes biases
        else:
            problems.append(f"{node.name}: zero point of type {zp.dtype}, "
                            + ("int8 needed" if int8_form(target) is S8S8 or is_weight else "int8 or uint8 needed"))
    return problems


def quantize_feeds_only_dequantize(g: QdqGraph, target: str) -> list[str]:
    """A QuantizeLinear's output is read by DequantizeLinear nodes only."""
    return [f"{node.name}: feeds {c.op_type} {c.name}, not a DequantizeLinear"
            for node in g.nodes if node.op_type == "QuantizeLinear"
            for c in g.consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]


def no_float_path(g: QdqGraph, target: str) -> list[str]:
    """A weighted layer with a DQ on its data or weight input has one on both."""
    return [f"{node.op_type} {node.name}: DequantizeLinear on one input only (float path left)"
            for node in g.weighted_layers()
            if g.is_quantized_layer(node) and not all(g.is_dq(i) for i in node.input[:2])]


def per_channel_weights(g: QdqGraph, target: str) -> list[str]:
    """A quantized layer's weight has one scale per output channel, on the output-channel axis."""
    problems = []
    for node in g.weighted_layers():
        if not all(g.is_dq(i) for i in node.input[:2]):
            continue  # float, or reported by no_float_path
        wdq = g.producer[node.input[1]]
        w = g.weight_source(wdq)
        if w is None:
            continue  # activation x activation MatMul: per-tensor on both sides is right
        axis_attr = [a.i for a in wdq.attribute if a.name == "axis"]
        axis = axis_attr[0] if axis_attr else 1
        scale = g.const(wdq.input[1])
        shape = tuple(g.inits[w].dims)
        expect = output_channel_axis(node, len(shape))
        if scale is None or scale.ndim != 1 or scale.size == 1 and shape[expect] != 1:
            problems.append(f"{node.name}: weight {w} is quantized per tensor, per-channel expected")
        elif axis % len(shape) != expect or scale.size != shape[expect]:
            problems.append(f"{node.name}: weight scales on axis {axis} ({scale.size}), expected axis {expect} "
                            f"({shape[expect]} output channels)")
    return problems


def tensorrt_placement_kept(g: QdqGraph, target: str) -> list[str]:
    """Q/DQ only where TensorRT fuses them (edgetl.quantize.placement)."""
    return placement_problems(g.model) if int8_form(target) is S8S8 else []


CHECKS = (scales_positive, zero_points_of_the_form, quantize_feeds_only_dequantize, no_float_path,
          per_channel_weights, tensorrt_placement_kept)


# -- the whole check ---------------------------------------------------------------------------------------
def check_graph(model: Any, target: str) -> GraphSummary:
    """Raise QuantizeError unless the Q/DQ graph (a ModelProto or a path) has the form `target` needs; return
    what it counted."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    g = QdqGraph(model)
    problems = [p for check in CHECKS for p in check(g, target)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise QuantizeError(f"the {target} int8 graph failed its structural check: {problems[0]}{more}",
                            "this is a bug in edgetl's quantizer settings: please report it")
    return summarize(g)


def summarize(g: QdqGraph) -> GraphSummary:
    adds = [n for n in g.nodes if n.op_type == "Add" and g.dq_inputs(n)]
    layers = g.weighted_layers()
    return GraphSummary(
        quantize_linear=sum(n.op_type == "QuantizeLinear" for n in g.nodes),
        dequantize_linear=sum(n.op_type == "DequantizeLinear" for n in g.nodes),
        quantized_layers=sum(g.is_quantized_layer(n) for n in layers),
        float_layers=[n.name for n in layers if not g.is_quantized_layer(n)],
        quantized_adds=len(adds),
        adds_one_input_quantized=sum(g.dq_inputs(n) == 1 for n in adds),
        quantized_pools=sum(n.op_type in POOLS and g.dq_inputs(n) > 0 for n in g.nodes))
