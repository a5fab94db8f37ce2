"""edgetl.portable.forms (one table of graph forms), the form in an ONNX graph's metadata, and `plan_build`:
every refusal of a build is decided before TensorRT is imported, so these run everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetl.card import ModelCard, check_form, onnx_form
from edgetl.errors import EdgetlError, FormMismatch, ModelError
from edgetl.portable import forms as F
from edgetl.rundir import RunDir
from edgetl.tensorrt import build as B

CARD = ModelCard(model="resnet18", class_names=["a", "b"], input_size=(3, 8, 8), resize=8,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# -- the table ---------------------------------------------------------------------------------------
def test_the_table_names_each_form_once():
    assert [f.file for f in F.FORMS] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8.cpu.onnx"]
    assert [f.name for f in F.FORMS] == ["fp32", "fp16", "qdq-s8s8", "qdq-u8s8"]
    assert [f.report_key for f in F.FORMS] == [None, "fp16", "int8/tensorrt", "int8/cpu"]
    assert [f.manifest_key for f in F.FORMS] == ["fp32", "fp16", "int8", "int8_cpu"]
    assert F.PRECISIONS == ("fp32", "fp16", "int8") and F.INT8_TARGETS == ("tensorrt", "cpu")
    assert len({f.name for f in F.FORMS}) == len(F.FORMS)


def test_form_for_and_the_older_words():
    assert F.form_for("int8") is F.S8S8 and F.form_for("int8", "tensorrt") is F.S8S8
    assert F.form_for("int8", "cpu") is F.U8S8 and F.form_for("fp32", "cpu") is F.FP32_FORM
    for word in ("int8/cpu", "int8_cpu", "qdq-u8s8"):  # the int8 CPU form's four spellings, plus its name
        assert F.form_named(word) is F.U8S8
    assert F.form_named("int8/tensorrt") is F.S8S8 and F.form_named("int8") is F.S8S8
    assert F.form_named("bf16") is None
    with pytest.raises(ValueError, match="precision bf16: not one of fp32, fp16, int8"):
        F.form_for("bf16")


def test_the_command_that_makes_each_graph():
    assert [f.hint() for f in F.FORMS] == [
        "run `edgetl export` first", "run `edgetl quantize --precision fp16` first",
        "run `edgetl quantize --precision int8` first", "run `edgetl quantize --precision int8 --target cpu` first"]
    assert F.U8S8.command("RUN") == "edgetl quantize RUN --precision int8 --target cpu"
    assert F.FP32_FORM.command("RUN") == "edgetl export RUN"


def test_the_file_name_rule_for_graphs_without_metadata():
    assert F.form_of_file("model.int8.cpu.onnx") is F.U8S8
    assert F.form_of_file("/x/model.int8.onnx") is F.S8S8 and F.form_of_file("mine.int8.onnx") is F.S8S8
    assert F.form_of_file("model.fp16.onnx") is F.FP16_FORM and F.form_of_file("model.onnx") is F.FP32_FORM
    assert F.form_of_file("resnet.onnx") is None  # a foreign name says nothing


def test_metadata_wins_over_the_name_and_contradictions_are_refused():
    props = F.U8S8.metadata()
    assert props == {"edgetl.precision": "int8", "edgetl.form": "qdq-u8s8"}
    assert F.form_of_graph(props, "model.onnx") is F.U8S8
    assert F.form_of_graph({}, "model.fp16.onnx") is F.FP16_FORM
    with pytest.raises(ValueError):
        F.form_of_metadata({"edgetl.form": "qdq-u8s8", "edgetl.precision": "fp16"})
    with pytest.raises(ValueError):
        F.form_of_metadata({"edgetl.form": "int4"})


def test_mismatch_and_which_graph_serves_a_runtime():
    assert F.mismatch(F.FP32_FORM, "int8") == "the graph is fp32, not int8 (precision lives in the graph)"
    assert F.mismatch(F.U8S8, "int8", "tensorrt") == "it is the ONNX Runtime (CPU) form of the int8 graph"
    assert F.mismatch(F.U8S8, "int8") is None and F.mismatch(None, "fp16") is None
    assert F.serving_form("int8", "cpu") is F.U8S8
    assert F.serving_form("int8", "cpu", {"qdq-u8s8": False}) is F.S8S8  # the run lacks the CPU form
    assert F.serving_form("int8", "cuda:0") is F.S8S8 and F.serving_form("fp16", "cpu") is F.FP16_FORM


def test_rundir_and_the_manifest_use_the_table():
    from edgetl.portable.manifest import model_file

    run = RunDir("/r")
    assert [run.onnx_for(f.precision, f.target or "tensorrt").name for f in F.FORMS] == [f.file for f in F.FORMS]
    models = {"int8": "model.int8.onnx", "int8_cpu": "model.int8.cpu.onnx"}
    assert model_file({"models": models}, "int8", "cpu") == "model.int8.cpu.onnx"
    assert model_file({"models": models}, "int8") == "model.int8.onnx"
    assert model_file({"models": {"int8": "model.int8.onnx"}}, "int8", "cpu") == "model.int8.onnx"


# -- the form in the graph ------------------------------------------------------------------------------
def _graph(path: Path, form: F.Form | None, batch=None, card: ModelCard = CARD) -> Path:
    """A 1-node graph (images -> Identity -> logits) with the card, and the form where given."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch or "batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch or "batch", 3, 8, 8])
    w = numpy_helper.from_array(np.zeros(1, np.float32), "w")
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y],
                                                [w]), opset_imports=[helper.make_opsetid("", 17)])
    card.write_onnx(proto, form)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def test_metadata_round_trip(tmp_path):
    path = _graph(tmp_path / "foreign.onnx", F.U8S8)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["edgetl.form"] == "qdq-u8s8" and props["edgetl.precision"] == "int8" and "edgetl.card" in props
    assert onnx_form(path) is F.U8S8 and ModelCard.from_onnx(path) == CARD
    # a later write without a form drops the source's (quantize starts from model.onnx)
    proto = onnx.load(str(path))
    CARD.write_onnx(proto)
    assert onnx_form(proto, "x.onnx") is None and onnx_form(proto, "model.fp16.onnx") is F.FP16_FORM
    CARD.write_onnx(proto, F.FP16_FORM)
    CARD.write_onnx(proto, F.FP16_FORM)  # replaced, not appended
    assert [p.key for p in proto.metadata_props].count("edgetl.form") == 1


def test_check_form_refuses_in_one_line(tmp_path):
    path = _graph(tmp_path / "model.int8.onnx", F.FP32_FORM)  # the name says int8, the graph says fp32
    with pytest.raises(FormMismatch) as e:
        check_form(path, "int8")
    assert e.value.message == f"{path}: the graph is fp32, not int8 (precision lives in the graph)"
    assert isinstance(e.value, ModelError) and e.value.exit_code == 1
    assert check_form(_graph(tmp_path / "old" / "model.fp16.onnx", None), "fp16") is F.FP16_FORM
    assert check_form(_graph(tmp_path / "foreign.onnx", None), "int8") is None  # nothing says: passes


def test_unknown_metadata_is_one_model_error(tmp_path):
    path = _graph(tmp_path / "model.onnx", None)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgetl.form", "int4"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="edgetl does not know"):
        onnx_form(path)


# -- plan_build: every refusal without TensorRT --------------------------------------------------------
@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    """A run with an fp32 and an int8 graph; importing a builder fails the test (plans never need one)."""
    monkeypatch.setattr(B, "import_flavour", lambda _lib: pytest.fail("TensorRT was imported"))
    root = tmp_path / "run"
    _graph(root / "model.onnx", F.FP32_FORM)
    _graph(root / "model.int8.onnx", F.S8S8)
    _graph(root / "model.int8.cpu.onnx", F.U8S8)
    return root


def cfg(**kw) -> B.BuildSettings:
    return B.BuildSettings(**kw)


def test_plan_build_decides_without_tensorrt(run):
    plan = B.plan_build(run, cfg(precision="int8", target="rtx", batch="1,4,8"))
    assert plan.onnx == run / "model.int8.onnx" and plan.form is F.S8S8 and plan.precision == "int8"
    assert plan.flavour.library == "tensorrt_rtx" and plan.compute_capabilities == B.RTX_COMPUTE_CAPABILITIES
    assert plan.profile == B.Profile(1, 4, 8) and plan.sample == (3, 8, 8) and plan.input_name == "images"
    assert plan.timing_cache is False  # RTX: a cache forces a GPU query
    plan = B.plan_build(run, cfg())
    assert plan.onnx == run / "model.onnx" and plan.compute_capabilities == () and plan.timing_cache


@pytest.mark.parametrize("settings, message", [
    (dict(precision="int8", onnx="model.onnx"), "the graph is fp32, not int8 (precision lives in the graph)"),
    (dict(precision="fp32", onnx="model.int8.onnx"), "the graph is int8, not fp32"),
    (dict(precision="int8", onnx="model.int8.cpu.onnx"), "ONNX Runtime (CPU) form of the int8 graph"),
    (dict(precision="fp16"), "model.fp16.onnx"),  # missing
    (dict(compute_capability="8.6"), "compute_capability: TensorRT builds for the GPU it runs on"),
    (dict(target="rtx", dla_core=0, precision="int8"), "dla_core: TensorRT-RTX has no DLA"),
    (dict(target="rtx", version_compatible=True), "version_compatible: a TensorRT-RTX engine runs on"),
    (dict(dla_core=0), "dla_core: DLA runs fp16 and int8 graphs only, not fp32"),
    (dict(batch="1,1,1", onnx="fixed.onnx"), "fixed batch of 2"),
])
def test_plan_build_refusals(run, settings, message):
    if settings.get("onnx") == "fixed.onnx":
        _graph(run / "fixed.onnx", F.FP32_FORM, batch=2)
    if "onnx" in settings:
        settings = {**settings, "onnx": run / settings["onnx"]}
    with pytest.raises(EdgetlError) as e:
        B.plan_build(run, cfg(**settings))
    assert message in e.value.message and "\n" not in e.value.message


def test_an_older_graph_without_metadata_is_judged_by_name_and_contents(run):
    _graph(run / "model.onnx", None)
    assert B.plan_build(run, cfg()).form is F.FP32_FORM
    with pytest.raises(FormMismatch, match="the graph is fp32, not int8"):
        B.plan_build(run, cfg(precision="int8", onnx=run / "model.onnx"))


def test_build_of_an_fp32_graph_as_int8_is_one_line_and_exit_1(run, capsys):
    """`edgetl build RUN --onnx RUN/model.onnx --precision int8` once wrote model.int8.plan and a sidecar
    saying int8 for an fp32 graph."""
    from edgetl.cli import _run

    code = _run(["build", str(run), "--onnx", str(run / "model.onnx"), "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{run / 'model.onnx'}: the graph is fp32, not int8 (precision lives in the graph)" in err
    assert not (run / "engines").exists()


def test_bench_refuses_a_graph_of_another_precision(tmp_path):
    from edgetl.bench.plan import plan_rows

    root = tmp_path / "run"
    _graph(root / "model.onnx", F.FP32_FORM)
    _graph(root / "model.int8.onnx", F.FP32_FORM)  # named int8, an fp32 graph inside
    todo, _ = plan_rows(RunDir(root), ["onnxruntime"], ["fp32"], "cpu")
    assert [(r.precision, r.model_file.name) for r in todo] == [("fp32", "model.onnx")]
    with pytest.raises(FormMismatch, match="model.int8.onnx: the graph is fp32, not int8"):
        plan_rows(RunDir(root), ["onnxruntime"], ["int8"], "cpu")


def test_int8_form_takes_the_form_its_name_or_quantizes_target_word():
    from edgetl.portable.forms import S8S8, U8S8, int8_form

    assert int8_form("tensorrt") is S8S8 and int8_form("qdq-s8s8") is S8S8 and int8_form(S8S8) is S8S8
    assert int8_form("cpu") is U8S8 and int8_form("int8/cpu") is U8S8
    with pytest.raises(ValueError, match="not an int8 form"):
        int8_form("fp16")
