"""Q/DQ placement of the TensorRT form per timm family (edgetl.quantize.placement), and the ONNX checker on every
graph edgetl writes. Random-init 32 px runs (conftest's `family_graphs`): structure needs no trained weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from edgetl.quantize.placement import placement_problems
from edgetl.quantize import QuantizeSettings, check_graph, quantize
from edgetl.demo.scaffold import FAMILIES

WRITTEN = ("model.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "model.fp16.onnx")


class Graph:
    """The quantized graph as who-produces-what, with the questions the placement tests ask."""

    def __init__(self, path: Path):
        self.model = onnx.load(str(path))
        self.nodes = list(self.model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.inits = {t.name for t in self.model.graph.initializer}

    def of(self, op: str) -> list:
        return [n for n in self.nodes if n.op_type == op]

    def dq(self, tensor: str) -> bool:
        p = self.producer.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear"

    def source(self, tensor: str):
        """The node behind a tensor, seen through a Q/DQ pair."""
        p = self.producer.get(tensor)
        while p is not None and p.op_type in ("QuantizeLinear", "DequantizeLinear"):
            p = self.producer.get(p.input[0])
        return p

    def quantized(self, node) -> list[bool]:
        return [self.dq(i) for i in node.input if i]

    def weight_dq(self, node) -> bool:
        """Input 1 is a weight initializer behind a Q/DQ pair."""
        src = self.producer.get(node.input[1])
        return self.dq(node.input[1]) and self.producer[src.input[0]].input[0] in self.inits

    def no_dq_into(self, *ops: str) -> bool:
        return all(not any(self.quantized(n)) for op in ops for n in self.of(op))


@pytest.fixture(scope="module")
def with_cpu_form(family_graphs, tmp_path_factory):
    """Factory: a writable copy of a family run with the cpu int8 form added (calibration from its cache)."""

    def make(model: str) -> Path:
        dst = tmp_path_factory.mktemp(f"cpu-{model}") / "run"
        shutil.copytree(family_graphs(model), dst)
        quantize(dst, QuantizeSettings(precision="int8", target="cpu", max_drop=100.0, batch_size=4))
        return dst

    return make


@pytest.mark.parametrize("model", FAMILIES)
def test_every_written_graph_passes_the_full_onnx_check(model, with_cpu_form):
    run = with_cpu_form(model)
    for name in WRITTEN:
        onnx.checker.check_model(str(run / name), full_check=True)  # raises on an unsorted graph
    check_graph(run / "model.int8.cpu.onnx", "cpu")


def _common(g: Graph) -> None:
    """Every family: convs and weighted MatMuls quantized on input and weight; the classifier Gemm (a GEMV at
    batch 1) float; Q/DQ nowhere TensorRT fuses nothing into."""
    for conv in g.of("Conv"):
        assert all(g.quantized(conv)[:2]) and g.weight_dq(conv), conv.name
    head = g.of("Gemm")
    assert len(head) == 1 and not any(g.quantized(head[0])), "the classifier GEMV must stay float"
    assert g.no_dq_into("Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Div", "Erf", "LayerNormalization",
                        "Softmax", "ReduceMean", "Flatten", "Reshape", "Transpose")


def _residual_adds_skip_only(g: Graph, expected: int, conv_side_ops: tuple[str, ...]) -> None:
    """Each residual Add: exactly one Q/DQ'd input, the skip; the other comes straight from the convolution
    with no Q/DQ, so TensorRT fuses the Add into that convolution."""
    adds = [a for a in g.of("Add") if sum(i not in g.inits for i in a.input) == 2]
    assert len(adds) == expected
    for add in adds:
        flags = g.quantized(add)
        assert flags.count(True) == 1, add.name
        conv_side = add.input[flags.index(False)]
        assert g.producer[conv_side].op_type in conv_side_ops, (add.name, g.producer[conv_side].op_type)


def test_resnet18_placement(family_graphs):
    g = Graph(family_graphs("resnet18") / "model.int8.onnx")
    _common(g)
    _residual_adds_skip_only(g, 8, ("Conv",))
    assert all(g.quantized(p)[0] for p in g.of("MaxPool") + g.of("GlobalAveragePool"))
    # the skip of a downsample block is itself a conv: its output is quantized, the main conv's is not
    down = next(a for a in g.of("Add") if all(g.source(i).op_type == "Conv" for i in a.input))
    skip = next(i for i in down.input if g.dq(i))
    assert "downsample" in g.source(skip).name


def test_avg_down_resnet_placement(tmp_path):
    """The demo's model (timm's test_resnet: downsample = AvgPool then a conv, so the skip is a conv too, and
    the block input feeds both paths through one shared Q/DQ). The main conv stays float into each Add:
    the Q/DQ after the branch point must not be taken for the place where the two paths meet (it once was,
    and the demo's quantize failed its own check)."""
    from edgetl.demo.scaffold import export_and_quantize, make_run

    run = make_run(tmp_path, "test_resnet", img_size=16, num_classes=5, images_per_class=4)
    export_and_quantize(run, "tensorrt")
    g = Graph(run / "model.int8.onnx")
    assert placement_problems(g.model) == []
    _residual_adds_skip_only(g, 4, ("Conv",))
    for add in g.of("Add"):
        if all(g.source(i).op_type == "Conv" for i in add.input):
            skip = next(i for i in add.input if g.dq(i))
            assert "downsample" in g.source(skip).name, add.name


@pytest.mark.parametrize("model,adds", [("mobilenetv3_small_050", 7), ("efficientnet_b0", 9)])
def test_mobile_nets_with_squeeze_excite(family_graphs, model, adds):
    g = Graph(family_graphs(model) / "model.int8.onnx")
    _common(g)
    _residual_adds_skip_only(g, adds, ("Conv",))  # the projection conv's output joins the skip unquantized
    assert all(g.quantized(p)[0] for p in g.of("GlobalAveragePool"))
    se_gates = [m for m in g.of("Mul") if any(g.source(i) is not None and g.source(i).op_type in
                                              ("Sigmoid", "HardSigmoid") for i in m.input)]
    assert se_gates and not any(any(g.quantized(m)) for m in se_gates)  # squeeze-excite gates stay float


def test_convnext_placement(family_graphs):
    g = Graph(family_graphs("convnext_atto") / "model.int8.onnx")
    _common(g)
    _residual_adds_skip_only(g, 12, ("Conv",))  # the exporter folds the layer-scale Mul into the last conv
    assert g.of("LayerNormalization") and g.no_dq_into("LayerNormalization")


def test_vit_placement(family_graphs):
    g = Graph(family_graphs("vit_tiny_patch16_224") / "model.int8.onnx")
    _common(g)
    weighted = [m for m in g.of("MatMul") if g.source(m.input[1]) is None]
    attention = [m for m in g.of("MatMul") if g.source(m.input[1]) is not None]
    assert len(weighted) == 48 and len(attention) == 24  # qkv, proj, fc1, fc2; Q.K^T and attn.V per block
    assert all(all(g.quantized(m)) and g.weight_dq(m) for m in weighted)
    assert not any(any(g.quantized(m)) for m in attention)  # the attention core stays float (ModelOpt)
    # residual joins after MatMul+bias: no convolution to fuse into; both inputs quantized, as ModelOpt does
    joins = [a for a in g.of("Add") if sum(i not in g.inits for i in a.input) == 2]
    assert len(joins) == 24 and all(all(g.quantized(a)) for a in joins)


def test_check_graph_refuses_the_old_placement(family_graphs):
    """Q/DQ on the convolution side of a residual Add (what edgetl wrote before) and on the classifier GEMV."""
    from onnx import helper

    from edgetl.errors import QuantizeError

    good = onnx.load(str(family_graphs("resnet18") / "model.int8.onnx"))
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    g = Graph.__new__(Graph)
    g.nodes = list(bad.graph.node)
    g.producer = {o: n for n in g.nodes for o in n.output}
    add = next(n for n in bad.graph.node if n.op_type == "Add")
    side = next(k for k, i in enumerate(add.input) if not g.dq(i))
    dq = g.producer[add.input[1 - side]]
    q = g.producer[dq.input[0]]
    pair = [helper.make_node("QuantizeLinear", [add.input[side], q.input[1], q.input[2]], ["conv_q"], name="conv_q"),
            helper.make_node("DequantizeLinear", ["conv_q", dq.input[1], dq.input[2]], ["conv_dq"], name="conv_dq")]
    at = list(bad.graph.node).index(add)
    for k, node in enumerate(pair):
        bad.graph.node.insert(at + k, node)
    add.input[side] = "conv_dq"
    with pytest.raises(QuantizeError, match="residual Add .*convolution's own output"):
        check_graph(bad, "tensorrt")
    bad.CopyFrom(good)
    fc = next(n for n in bad.graph.node if n.op_type == "Gemm")
    pair = [helper.make_node("QuantizeLinear", [fc.input[0], q.input[1], q.input[2]], ["fc_q"], name="fc_q"),
            helper.make_node("DequantizeLinear", ["fc_q", dq.input[1], dq.input[2]], ["fc_dq"], name="fc_dq")]
    at = list(bad.graph.node).index(fc)
    for k, node in enumerate(pair):
        bad.graph.node.insert(at + k, node)
    fc.input[0] = "fc_dq"
    assert any("/fc/Gemm: quantized, but a gemv stays float" in p for p in placement_problems(bad))
    with pytest.raises(QuantizeError, match="structural check"):
        check_graph(bad, "tensorrt")
