"""The one pass over an image set: each image is decoded once and run through the fp32 graph, with the
penultimate features and every tensor the int8 graph quantizes added as outputs, and through the int8 graph.

Coverage is read on the fp32 graph's tensors against the int8 graph's own scales: what the calibration chose is
in the QuantizeLinear nodes (scale, zero point), so no calibration cache is needed and any int8 graph of the run
is checked as it is deployed. A value counts as outside when it lies more than half a step beyond the int8
grid's ends: the quantizer clips it (saturates) there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.card import ModelCard
from edgetl.data import ImageList, iter_batches
from edgetl.errors import ModelError
from edgetl.portable.forms import Form
from edgetl.portable.rows import pad_batch
from edgetl.portable.runners import OrtRunner, RunnerError

_GRID = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass(frozen=True)
class QuantRange:
    """The float interval an activation tensor's int8 grid covers (half a step beyond both ends included)."""

    tensor: str
    lo: float
    hi: float


@dataclass
class Pass:
    """What one image set gave: per image, fp32 logits, features, the share of each quantized tensor's values
    outside its range (columns in the order of the ranges), and int8 logits."""

    labels: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    outside: np.ndarray  # (images, tensors); (images, 0) without an int8 graph
    int8_logits: np.ndarray | None


def _initializers(graph) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def int8_ranges(int8_proto, fp32_proto) -> list[QuantRange]:
    """The activation tensors the int8 graph quantizes (per-tensor QuantizeLinear on a non-constant input) that
    the fp32 graph has too, and the float interval each one's int8 grid covers, in graph order; weights are
    constants and never shift."""
    consts = _initializers(int8_proto.graph)
    known = {t for n in fp32_proto.graph.node for t in n.output} | {i.name for i in fp32_proto.graph.input}
    ranges: dict[str, QuantRange] = {}
    for node in int8_proto.graph.node:
        if (node.op_type != "QuantizeLinear" or node.input[0] in consts or node.input[0] in ranges
                or node.input[0] not in known):
            continue
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zero is None or scale.size != 1 or zero.dtype.name not in _GRID:
            continue  # per-channel or computed scales: not an activation range calibration chose
        qmin, qmax = _GRID[zero.dtype.name]
        s, z = float(scale.reshape(())), float(zero.reshape(()))
        ranges[node.input[0]] = QuantRange(node.input[0], (qmin - z - 0.5) * s, (qmax - z + 0.5) * s)
    return list(ranges.values())


def feature_tensor(proto) -> str:
    """The classifier's input: the activation input of the graph's last Gemm or MatMul (the head)."""
    consts = {t.name for t in proto.graph.initializer}
    for node in reversed(proto.graph.node):  # ONNX graphs are stored in topological order
        if node.op_type in ("Gemm", "MatMul"):
            inputs = [t for t in node.input[:2] if t not in consts]
            if inputs:
                return inputs[0]
    raise ModelError("the fp32 graph has no Gemm or MatMul head, so it has no penultimate features to compare",
                     "edgetl shift needs a classifier whose last layer is linear (every timm classifier's is)")


def probe_graph(fp32_proto, tensors: list[str]) -> bytes:
    """The fp32 graph with `tensors` added as outputs after the logits (the graph's input is not an output: the
    pass has it already)."""
    from onnx import ModelProto, TensorProto, helper

    proto = ModelProto()
    proto.CopyFrom(fp32_proto)
    have = {o.name for o in proto.graph.output} | {i.name for i in proto.graph.input}
    for name in tensors:
        if name not in have:
            proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            have.add(name)
    return proto.SerializeToString()


@dataclass
class Graphs:
    """The run's graphs a pass runs, each read once: model.onnx (with its weights) and its feature tensor, and
    the int8 graph, the ranges it quantizes and whether its form is scored exactly."""

    fp32_path: Path
    fp32: Any
    feature: str
    int8_form: Form | None = None  # its file lies beside model.onnx
    ranges: list[QuantRange] = field(default_factory=list)
    exact_int8: bool = True

    @property
    def int8_path(self) -> Path | None:
        return self.fp32_path.parent / self.int8_form.file if self.int8_form is not None else None


def _session(model, threads: int | None, exact: bool, what: str) -> OrtRunner:
    try:
        return OrtRunner(model, "cpu", threads=threads, exact=exact)
    except RunnerError as e:
        raise ModelError(f"{what}: {e}", "re-run the command that wrote it (edgetl export / quantize)") from None


def _run(runner: OrtRunner, x: np.ndarray) -> list[np.ndarray]:
    """Every output for a batch; a fixed-batch graph runs it in chunks of its batch, the last one padded."""
    step = runner.fixed_batch or len(x)
    parts = []
    for start in range(0, len(x), step):
        xb, n = pad_batch(x[start:start + step], step)
        parts.append([o[:n] for o in runner.session.run(None, {runner.input_name: xb})])
    return [np.concatenate(p) for p in zip(*parts)]


def _outside_shares(x: np.ndarray, outputs: dict[str, np.ndarray], ranges: list[QuantRange]) -> np.ndarray:
    shares = np.zeros((len(x), len(ranges)), np.float64)
    for j, r in enumerate(ranges):
        a = (outputs[r.tensor] if r.tensor in outputs else x).reshape(len(x), -1)
        shares[:, j] = ((a < r.lo) | (a > r.hi)).mean(1)
    return shares


def run_pass(graphs: Graphs, card: ModelCard, items: ImageList, *, coverage: bool = True, int8: bool = True,
             batch_size: int = 16, threads: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> Pass:
    """One pass of `items` through the fp32 graph (features and, with `coverage`, the int8 ranges' tensors) and,
    with `int8`, through the int8 graph."""
    ranges = graphs.ranges if coverage else []
    what = str(graphs.fp32_path)
    probe = _session(probe_graph(graphs.fp32, [graphs.feature] + [r.tensor for r in ranges]), threads, False, what)
    names = [o.name for o in probe.session.get_outputs()]
    quantized = None
    if int8 and graphs.int8_path is not None:
        quantized = _session(str(graphs.int8_path), threads, graphs.exact_int8, str(graphs.int8_path))
    labels, logits, features, outside, int8_logits, done = [], [], [], [], [], 0
    for x, y in iter_batches(items, card, batch_size):
        out = dict(zip(names, _run(probe, x)))
        labels.append(y)
        logits.append(out[names[0]])
        features.append(out[graphs.feature].reshape(len(x), -1))
        outside.append(_outside_shares(x, out, ranges))
        if quantized is not None:
            int8_logits.append(_run(quantized, x)[0])
        done += len(y)
        if progress:
            progress(done, len(items))
    return Pass(labels=np.concatenate(labels), logits=np.concatenate(logits), features=np.concatenate(features),
                outside=np.concatenate(outside), int8_logits=np.concatenate(int8_logits) if quantized else None)
