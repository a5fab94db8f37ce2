"""edgetl quantize: INT8 Q/DQ (TensorRT and cpu forms), FP16, the structural check, sensitivity/exclusion,
the calibration cache, bad input and the CLI, on the tiny digits run (ONNX Runtime, CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from edgetl.card import CARD_KEY
from edgetl.errors import DataError, ModelError, QuantizeError, RunDirError
from edgetl.export.run import export
from edgetl.quantize import QuantReport, QuantizeSettings, check_graph, quantize, read_report, to_fp16
from edgetl.quantize.sensitivity import SENSITIVITY_IMAGES
from edgetl.portable.isa import cpu_int8_isa
from edgetl.rundir import RunDir
from edgetl.stage import Events

# Stated bound on the digits val split (80 images, so one image is 1.25 points): int8 top-1 within
# 5 points of fp32 and the same top-1 class as fp32 on >= 90% of the images.
MAX_DROP_PT = 5.0
MIN_AGREEMENT = 0.90
NO_EXCLUSION = 100.0  # --max-drop that never triggers sensitivity analysis (keeps tests fast)


@pytest.fixture(scope="module")
def exported(train_run, tmp_path_factory) -> Path:
    """model.onnx + splits.json of the session's resnet18 run on digits 0-4 (conftest's `train_run`; val
    top-1 well above chance, so an accuracy loss shows). Tests that write copy it (`fresh`)."""
    dst = tmp_path_factory.mktemp("quant") / "run"
    shutil.copytree(train_run("resnet18"), dst)
    export(dst)
    return dst


def fresh(exported: Path, tmp_path: Path) -> Path:
    """A writable run with only what quantize reads (model.onnx and splits.json)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.onnx", "splits.json"):
        shutil.copy2(exported / name, run / name)
    return run


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory) -> tuple[Path, QuantReport]:
    """Both int8 forms and fp16, written once."""
    run = tmp_path_factory.mktemp("quantized") / "run"
    run.mkdir()
    for name in ("model.onnx", "splits.json"):
        shutil.copy2(exported / name, run / name)
    quantize(run, QuantizeSettings(precision="int8", target="both", calib_size=64, max_drop=NO_EXCLUSION))
    quantize(run, QuantizeSettings(precision="fp16"))
    return run, read_report(run)


def _zero_points(model) -> list[np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def test_int8_tensorrt_form_structure_and_accuracy(quantized):
    run, report = quantized
    path = RunDir(run).onnx_for("int8", "tensorrt")
    model = onnx.load(str(path))
    summary = check_graph(model, "tensorrt")
    zps = _zero_points(model)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # S8S8, symmetric
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == summary.quantize_linear > 0
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # every conv quantized; the classifier Gemm (a GEMV at batch 1) stays float, as ModelOpt leaves it
    assert summary.quantized_layers == len(convs) and summary.float_layers == ["/fc/Gemm"]
    # residual joins: only the skip input carries Q/DQ (TensorRT fuses the Add into the conv); both pools too
    assert summary.quantized_adds == summary.adds_one_input_quantized == ops.count("Add") == 8
    assert summary.quantized_pools == 2
    # per-channel weights: a Conv's weight DQ has one scale per output channel on axis 0
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    conv = convs[0]
    wdq = producer[conv.input[1]]
    wq = producer[wdq.input[0]]  # a Q/DQ pair on the float weight, as TensorRT's explicit mode reads it
    assert wq.op_type == "QuantizeLinear" and wq.input[0] in inits
    assert numpy_helper.to_array(inits[wdq.input[1]]).shape == (inits[wq.input[0]].dims[0],)
    assert len(conv.input) < 3 or conv.input[2] in inits  # bias stays float (no bias quantization)
    # Q/DQ sit on layer inputs only: a conv output is quantized only as the skip input of an Add (a
    # downsample conv), never where a block's own conv enters its residual Add
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for q in model.graph.node:
        src = producer.get(q.input[0])
        if q.op_type == "QuantizeLinear" and src is not None and src.op_type == "Conv":
            dq_readers = [r for dq in readers[q.output[0]] for r in readers[dq.output[0]]]
            assert "downsample" in src.name and dq_readers and all(r.op_type == "Add" for r in dq_readers)
    e = report.entries["int8/tensorrt"]
    assert e.model_file == "model.int8.onnx" and e.target == "tensorrt"
    assert abs(e.drop) <= MAX_DROP_PT and e.top1_agreement >= MIN_AGREEMENT
    assert e.drop == pytest.approx((e.fp32_top1 - e.top1) * 100)
    assert e.calib_size == 64 and len(e.calib_hash) == 64 and e.excluded == [] and e.seconds > 0
    # image by image: the drop is what the discordant images make it, per class counts add up to the images
    d = e.paired
    assert d.n == e.eval_n and d.only_reference_right - d.only_model_right == round(e.drop * e.eval_n / 100)
    assert sum(c.n for c in d.per_class.values()) == e.eval_n and 0 < d.p_value <= 1
    # scored as TensorRT computes it: the Q/DQ arithmetic, not this CPU's fused int8 kernels (issue 25);
    # recomputed here with ONNX Runtime's optimizations off, on the same val images
    assert e.scoring == "exact" and e.other_scoring.scoring == "fused" and e.cpu_isa == cpu_int8_isa()["isa"]
    assert e.top1 == pytest.approx(_top1_exact(run, path), abs=1e-9) and e.reduce_range is False
    assert json.loads(dict((p.key, p.value) for p in model.metadata_props)[CARD_KEY])["class_names"]


def test_int8_cpu_form_is_u8s8_and_scored_on_its_own(quantized):
    run, report = quantized
    model = onnx.load(str(RunDir(run).onnx_for("int8", "cpu")))
    check_graph(model, "cpu")
    dtypes = {z.dtype for z in _zero_points(model)}
    assert np.dtype(np.uint8) in dtypes and np.dtype(np.int8) in dtypes  # uint8 activations, int8 weights
    with pytest.raises(QuantizeError, match="structural check"):
        check_graph(model, "tensorrt")  # uint8 activations are not the TensorRT form
    e = report.entries["int8/cpu"]
    assert e.model_file == "model.int8.cpu.onnx"
    # scored through the real CPU kernels, the ISA named; 7-bit weights exactly where U8S8 saturates
    assert e.scoring == "fused" and e.other_scoring.scoring == "exact" and e.cpu_isa == cpu_int8_isa()["isa"]
    assert e.reduce_range is cpu_int8_isa()["int8_saturates"]
    # ONNX Runtime's whole op set, as quantize_static: every Add and the global pool read and write int8 (with
    # the QDQ registry alone the last residual block and the pool ran in float on the CPU)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = {i: n for n in model.graph.node for i in n.input}
    for node in (n for n in model.graph.node if n.op_type in ("Add", "GlobalAveragePool")):
        assert all(producer[i].op_type == "DequantizeLinear" for i in node.input), node.name
        assert readers[node.output[0]].op_type == "QuantizeLinear", node.name
    assert abs(e.drop) <= MAX_DROP_PT and e.top1_agreement >= MIN_AGREEMENT
    assert set(report.entries) == {"int8/tensorrt", "int8/cpu", "fp16"}  # merged, nothing lost


def _top1_exact(run: Path, path: Path) -> float:
    """Top-1 of a graph on the run's val split, run by ONNX Runtime with graph optimizations off."""
    import onnxruntime as ort

    from edgetl.card import ModelCard
    from edgetl.data import load_arrays, read_splits

    _, val = read_splits(RunDir(run).splits)
    x, y = load_arrays(val, ModelCard.from_onnx(RunDir(run).onnx))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def test_structural_check_catches_bad_graphs(quantized, tmp_path):
    run, _ = quantized
    good = onnx.load(str(RunDir(run).onnx_for("int8", "tensorrt")))
    # a non-zero int8 zero point
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    dq = next(n for n in bad.graph.node if n.op_type == "DequantizeLinear")
    zp = next(t for t in bad.graph.initializer if t.name == dq.input[2])
    zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + np.int8(3), zp.name))
    with pytest.raises(QuantizeError, match="zero point is not 0"):
        check_graph(bad, "tensorrt")
    # a quantized Conv whose weight bypasses its DQ: a dangling float path
    bad.CopyFrom(good)
    producer = {o: n for n in bad.graph.node for o in n.output}
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    conv.input[1] = producer[producer[conv.input[1]].input[0]].input[0]
    with pytest.raises(QuantizeError, match="one input only"):
        check_graph(bad, "tensorrt")
    # per-tensor weight scales where per-channel is required
    bad.CopyFrom(good)
    producer = {o: n for n in bad.graph.node for o in n.output}
    wdq = producer[next(n for n in bad.graph.node if n.op_type == "Conv").input[1]]
    scale = next(t for t in bad.graph.initializer if t.name == wdq.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale)[:2], scale.name))
    with pytest.raises(QuantizeError, match="axis"):
        check_graph(bad, "tensorrt")


def test_fp16_parity_and_io(quantized):
    run, report = quantized
    model = onnx.load(str(RunDir(run).onnx_for("fp16")))
    for v in list(model.graph.input) + list(model.graph.output):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    e = report.entries["fp16"]
    assert e.cpu_runnable is True and e.parity_ok is True
    assert e.parity.max_abs_logit_delta <= e.parity.tolerance
    assert e.parity.max_abs_logit_delta > 0  # it really ran in fp16
    assert e.parity.top1_agreement >= 0.99 and abs(e.drop) <= 2.5


def test_fp16_keeps_overflow_prone_ops_in_fp32():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                               helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=-1)], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp16, kept = to_fp16(model)
    assert kept == ["Softmax"]
    inferred = onnx.shape_inference.infer_shapes(fp16)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    sm = next(n for n in fp16.graph.node if n.op_type == "Softmax")
    assert types[sm.input[0]] == TensorProto.FLOAT  # Softmax reads float32 (a Cast is put in front)
    assert next(t for t in fp16.graph.initializer if t.name == "w").data_type == TensorProto.FLOAT16


def test_second_run_uses_cache_and_method_auto_keeps_best(exported, tmp_path, monkeypatch):
    run = fresh(exported, tmp_path)
    req = QuantizeSettings(target="tensorrt", calib_size=32, max_drop=NO_EXCLUSION, method="auto")
    first = quantize(run, req).entries["int8/tensorrt"]
    tried = first.methods_tried
    assert set(tried) == {"minmax", "entropy", "percentile"}
    assert first.top1 == max(t.top1 for t in tried.values())
    assert tried[first.method].top1 == first.top1
    assert len(list((Path(run) / "calib_cache").glob("*.json"))) == 3

    import edgetl.calibration.cache as cache

    def no_calibration(*a, **k):
        raise AssertionError("the calibrator ran although the ranges were cached")

    monkeypatch.setattr(cache, "collect_ranges", no_calibration)
    second = quantize(run, req).entries["int8/tensorrt"]
    assert all(t.cache_hit for t in second.methods_tried.values())
    assert second.top1 == first.top1 and second.method == first.method


def test_methods_with_identical_ranges_are_named_and_scored_once(exported, tmp_path, monkeypatch):
    """ONNX Runtime's entropy calibrator with its defaults returned minmax's ranges byte for byte; whatever the
    cause, a method whose ranges equal an earlier one's is reported as such and not scored again. Also: the
    one-line warning below NVIDIA's ~500 calibration images."""
    import edgetl.calibration.cache as cache
    from edgetl.calibration.methods import collect_ranges
    from edgetl.quantize.scoring import Scorer

    monkeypatch.setattr(cache, "collect_ranges", lambda path, reader, method, *a: collect_ranges(path, reader, "minmax"))
    scored = []
    real_score = Scorer.score
    monkeypatch.setattr(Scorer, "score", lambda self, proto, scoring="exact": scored.append(scoring)
                        or real_score(self, proto, scoring))

    class Record(Events):
        def __init__(self):
            self.warnings = []

        def warning(self, text):
            self.warnings.append(text)

    events = Record()
    run = fresh(exported, tmp_path)
    e = quantize(run, QuantizeSettings(target="tensorrt", calib_size=32, max_drop=NO_EXCLUSION, method="auto"),
                 events).entries["int8/tensorrt"]
    tried = e.methods_tried
    assert tried["minmax"].same_ranges_as is None
    assert tried["entropy"].same_ranges_as == tried["percentile"].same_ranges_as == "minmax"
    assert tried["entropy"].top1 == tried["minmax"].top1 and e.method == "minmax"
    assert scored == ["exact", "fused"]  # one model: scored its own way, then the other way once
    assert [w for w in events.warnings if "calibrating on 32 images" in w and "at least 500" in w]


def test_max_drop_excludes_the_layer_that_hurts(exported, tmp_path):
    """Crafted case: the stem conv's input range is shrunk in the cache to 1e-4, so quantizing that conv
    ruins the model. Sensitivity analysis must find that very conv, keep it in float and recover accuracy."""
    run = fresh(exported, tmp_path)
    req = QuantizeSettings(target="tensorrt", calib_size=32, max_drop=NO_EXCLUSION)
    clean = quantize(run, req).entries["int8/tensorrt"]
    model = onnx.load(str(Path(run) / "model.onnx"))
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    # the stem conv: every path goes through it (a block conv would be bypassed by its residual)
    victim = next(n for n in model.graph.node if n.op_type == "Conv")
    assert len(readers[victim.input[0]]) == 1
    cache_file = next((Path(run) / "calib_cache").glob("minmax-*.json"))
    data = json.loads(cache_file.read_text())
    data["ranges"][victim.input[0]] = [0.0, 1e-4]
    cache_file.write_text(json.dumps(data))

    broken = quantize(run, req).entries["int8/tensorrt"]
    assert broken.drop > clean.drop + 5  # the crafted range really hurts
    fixed = quantize(run, QuantizeSettings(target="tensorrt", calib_size=32, max_drop=clean.drop + 1.0))
    e = fixed.entries["int8/tensorrt"]
    assert e.excluded and e.excluded[0].node == victim.name
    assert e.excluded[0].gain > 5 and e.top1 > broken.top1
    assert e.sensitivity[0].node == victim.name  # the most sensitive layer is the crafted one
    # bounded search: the stem is the first candidate and keeping it float meets the budget, so the scan
    # stopped there instead of measuring the other 30-odd layers
    assert len(e.sensitivity) == 1 and len(e.excluded) == 1
    assert e.sensitivity_images == min(e.eval_n, SENSITIVITY_IMAGES)
    assert victim.name in e.structure.float_layers
    written = onnx.load(str(RunDir(run).onnx_for("int8", "tensorrt")))
    node = next(n for n in written.graph.node if n.name == victim.name)
    producer = {o: n for n in written.graph.node for o in n.output}
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


# -- bad input: one clear error each, nothing written ------------------------------------------------------
def _nothing_written(run: Path) -> None:
    assert not (run / "model.int8.onnx").exists() and not (run / "model.int8.cpu.onnx").exists()
    assert not (run / "quant_report.json").exists()
    assert not list(run.glob(".*.tmp"))


def test_bad_calibration_folders(exported, tmp_path):
    run = fresh(exported, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        quantize(run, QuantizeSettings(calib=str(empty)))
    foreign = tmp_path / "foreign"
    (foreign / "cat").mkdir(parents=True)
    shutil.copy2(_any_png(exported), foreign / "cat" / "a.png")
    with pytest.raises(DataError, match="classes the model does not know: cat"):
        quantize(run, QuantizeSettings(calib=str(foreign)))
    with pytest.raises(QuantizeError, match="fewer than one batch of 32"):
        quantize(run, QuantizeSettings(calib_size=8, batch_size=32))
    _nothing_written(run)


def _any_png(exported: Path) -> Path:
    from edgetl.data import read_splits

    return Path(read_splits(exported / "splits.json")[0].paths[0])  # stored relative to the data root


def test_already_quantized_no_card_no_model(exported, quantized, tmp_path):
    run = fresh(exported, tmp_path)
    shutil.copy2(RunDir(quantized[0]).onnx_for("int8", "tensorrt"), run / "model.onnx")
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize(run, QuantizeSettings())
    shutil.copy2(RunDir(quantized[0]).onnx_for("fp16"), run / "model.onnx")
    with pytest.raises(QuantizeError, match="float16"):
        quantize(run, QuantizeSettings(precision="fp16"))
    model = onnx.load(str(exported / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(run / "model.onnx"))
    with pytest.raises(ModelError, match="no edgetl model card"):
        quantize(run, QuantizeSettings())
    (run / "model.onnx").unlink()
    with pytest.raises(RunDirError, match="model.onnx is missing") as err:
        quantize(run, QuantizeSettings())
    assert "edgetl export" in err.value.hint
    _nothing_written(run)
    with pytest.raises(ValidationError, match="method"):
        QuantizeSettings(method="kl")


def test_cli_end_to_end_and_error_exit(exported, tmp_path):
    run = fresh(exported, tmp_path)
    cmd = [sys.executable, "-m", "edgetl.cli", "quantize", str(run), "--target", "both", "--calib-size", "32",
           "--max-drop", str(NO_EXCLUSION)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "model.int8.onnx" in done.stdout and "model.int8.cpu.onnx" in done.stdout
    report = json.loads((run / "quant_report.json").read_text())
    assert set(report["entries"]) == {"int8/tensorrt", "int8/cpu"}
    check_graph(run / "model.int8.onnx", "tensorrt")
    bad = subprocess.run([sys.executable, "-m", "edgetl.cli", "quantize", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "no such run directory" in bad.stderr


# -- issue 14: a missed budget is never silent; a corrupt report fails first; runs do not collide ------------
def test_missed_budget_exits_3_keeps_the_file_and_marks_it(exported, tmp_path):
    """Calibration ranges crushed to 1e-4 everywhere: no single node kept in float restores the model, so the
    sensitivity search (residual Adds and pools are candidates too) ends over budget."""
    run = fresh(exported, tmp_path)
    quantize(run, QuantizeSettings(target="tensorrt", calib_size=32, max_drop=NO_EXCLUSION))
    cache_file = next((run / "calib_cache").glob("minmax-*.json"))
    data = json.loads(cache_file.read_text())
    data["ranges"] = {k: [0.0, 1e-4] for k in data["ranges"]}
    cache_file.write_text(json.dumps(data))
    cmd = [sys.executable, "-m", "edgetl.cli", "quantize", str(run), "--calib-size", "32", "--max-drop", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.int8.onnx: int8 tensorrt top-1" in errors[0]
    assert "over max_drop 1.0 after measuring" in errors[0] and "marked over_budget" in errors[0]
    e = read_report(run).entries["int8/tensorrt"]
    assert e.over_budget is True and e.within_max_drop is False and e.drop > 1.0
    assert (run / "model.int8.onnx").exists() and e.model_sha256
    assert "model.int8.onnx" in done.stdout and "above max_drop 1.0" in done.stdout  # the table, then exit 3
    assert e.paired.significant and e.paired.p_value < 0.01 and "(a real drop)" in done.stdout
    candidates = {s.node for s in e.sensitivity}
    model = onnx.load(str(run / "model.onnx"))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[c] for c in candidates} == {"Conv", "Add", "MaxPool", "GlobalAveragePool"}  # not the float fc
    assert f"after measuring {len(candidates)} layer(s)" in errors[0]


def test_corrupt_quant_report_is_one_line_before_anything_is_written(exported, tmp_path):
    run = fresh(exported, tmp_path)
    for text, match in (("{\"entries\": {", "not readable JSON"), ("[1, 2]", "not an edgetl quant report"),
                        ("{\"entries\": {\"int8/cpu\": 3}}", "not an edgetl quant report")):
        (run / "quant_report.json").write_text(text)
        with pytest.raises(QuantizeError, match=match):
            quantize(run, QuantizeSettings(calib_size=32, max_drop=NO_EXCLUSION))
        assert (run / "quant_report.json").read_text() == text  # left as it was
        assert not (run / "model.int8.onnx").exists() and not list(run.glob(".*.tmp"))


def test_onnxruntime_scratch_files_stay_private(exported, tmp_path):
    """ONNX Runtime writes `<model>-inferred.onnx` beside the model it reads (calibration and quantization):
    that name is taken by a folder here, so any write there would fail; edgetl hands it a private copy."""
    run = fresh(exported, tmp_path)
    (run / "model-inferred.onnx").mkdir()
    e = quantize(run, QuantizeSettings(calib_size=32, max_drop=NO_EXCLUSION)).entries["int8/tensorrt"]
    assert e.calib_size == 32 and (run / "model.int8.onnx").exists()
    assert (run / "model-inferred.onnx").is_dir() and not list((run / "model-inferred.onnx").iterdir())


def test_parallel_quantizations_of_one_run(exported, tmp_path):
    run = fresh(exported, tmp_path)
    cmd = [sys.executable, "-m", "edgetl.cli", "quantize", str(run), "--calib-size", "16", "--batch-size", "8",
           "--max-drop", str(NO_EXCLUSION)]
    procs = [subprocess.Popen(cmd + ["--method", m], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("minmax", "entropy", "percentile")]
    outs = [p.communicate(timeout=600) for p in procs]
    # One writer per run (issue 24): whoever holds RUN/.edgetl.lock quantizes, the others are refused in one line
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 1} and 0 in codes, [err for _, err in outs]
    for code, (_, err) in zip(codes, outs):
        if code:
            assert err.startswith("error: ") and "edgetl quantize (pid" in err and "Traceback" not in err, err
            assert err.count("\n") == 2 and "hint: wait for it to finish" in err  # the line and its hint
    assert not list(run.glob("*-inferred.onnx")) and not list(run.glob(".*.tmp"))
    assert not (run / ".edgetl.lock").exists()
    check_graph(run / "model.int8.onnx", "tensorrt")
    assert len(list((run / "calib_cache").glob("*.json"))) == codes.count(0)


# -- issue 11: settings from --config, closed vocabularies, the settings file, one key per fact ---------------
def _cli(args: list, capsys) -> tuple[int, str, str]:
    from edgetl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_config_file_is_used_options_win_and_settings_are_recorded(exported, tmp_path, capsys):
    import yaml

    run = fresh(exported, tmp_path)
    config = tmp_path / "quantize.yaml"
    config.write_text("precision: fp16\nmax_drop: 7.5\nthreads: 1\n")
    code, out, err = _cli(["quantize", run, "--config", config, "--max-drop", "9"], capsys)
    assert code == 0, err
    first = read_report(run).entries["fp16"]
    assert set(read_report(run).entries) == {"fp16"}  # precision came from the file
    assert first.max_drop == 9.0 and "model.fp16.onnx" in out  # the option won over the file's 7.5
    recorded = run / "settings" / "quantize.yaml"
    assert yaml.safe_load(recorded.read_text()) == {**QuantizeSettings().model_dump(), "precision": "fp16",
                                                    "max_drop": 9.0, "threads": 1}
    (run / "model.fp16.onnx").unlink()
    code, _, err = _cli(["quantize", run, "--config", recorded], capsys)  # the recorded file repeats the step
    again = read_report(run).entries["fp16"]
    assert code == 0, err
    assert (again.top1, again.model_sha256, again.max_drop) == (first.top1, first.model_sha256, 9.0)


@pytest.mark.parametrize("option,value", [("--precision", "int4"), ("--target", "gpu"), ("--method", "kl")])
def test_closed_vocabularies_are_refused_by_the_cli(exported, tmp_path, capsys, option, value):
    run = fresh(exported, tmp_path)
    code, _, err = _cli(["quantize", run, option, value], capsys)
    assert code == 2 and option in err and value in err and "Traceback" not in err
    _nothing_written(run)
    assert not (run / "settings").exists()


def test_bad_value_in_the_config_file_names_the_setting(exported, tmp_path, capsys):
    run = fresh(exported, tmp_path)
    config = tmp_path / "quantize.yaml"
    for text, setting in (("precision: int4\n", "'precision'"), ("calib_size: 0\n", "'calib_size'"),
                          ("max_drop: .nan\n", "'max_drop'"), ("batch_sise: 8\n", "'batch_sise'")):
        config.write_text(text)
        code, _, err = _cli(["quantize", run, "--config", config], capsys)
        assert code == 1 and err.startswith("error: setting ") and setting in err.splitlines()[0], err
        assert "--" not in err.splitlines()[0]  # a field name, not a flag
    _nothing_written(run)


def test_fresh_report_has_one_key_per_fact(quantized):
    run, _ = quantized
    data = json.loads((run / "quant_report.json").read_text())
    for key, e in data["entries"].items():
        assert sorted(k for k in e if k.endswith("top1")) == ["fp32_top1", "top1"], key
    assert QuantReport.model_validate(data).model_dump(mode="json") == data  # the file is exactly the model


def test_old_report_with_duplicate_top1_keys_is_read(quantized, exported, tmp_path):
    """Reports written before issue 11 carried each entry's top-1 twice (`top1` and `int8_top1`/`fp16_top1`):
    read them, and the next write keeps one key."""
    old = json.loads((quantized[0] / "quant_report.json").read_text())
    for key, e in old["entries"].items():
        e["int8_top1" if key.startswith("int8/") else "fp16_top1"] = e["top1"]
    run = fresh(exported, tmp_path)
    (run / "quant_report.json").write_text(json.dumps(old))
    report = read_report(run)
    assert {k: e.top1 for k, e in report.entries.items()} == {k: e["top1"] for k, e in old["entries"].items()}
    quantize(run, QuantizeSettings(precision="fp16"))  # merged into the old report
    written = json.loads((run / "quant_report.json").read_text())["entries"]
    assert set(written) == {"int8/tensorrt", "int8/cpu", "fp16"}
    assert written["int8/cpu"]["top1"] == old["entries"]["int8/cpu"]["top1"]
    assert not [k for e in written.values() for k in e if k in ("int8_top1", "fp16_top1")]


def test_the_quantize_package_has_no_import_cycle():
    """Each module of edgetl/quantize imports only modules below it (what `graph` or `report` needs never
    reaches back to the stage in `run`)."""
    import ast

    import edgetl.quantize

    folder = Path(edgetl.quantize.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text())
        imports[path.stem] = {n.module.split(".")[2] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                              and n.module and n.module.startswith("edgetl.quantize.")}
    assert set(imports) >= {"settings", "report", "graph", "check", "sensitivity", "fp16", "int8", "scoring", "run"}
    done: list[str] = []
    while len(done) < len(imports):  # peel off modules whose imports are all placed: a cycle never peels
        ready = sorted(m for m in imports if m not in done and imports[m] <= set(done))
        assert ready, f"import cycle among {sorted(set(imports) - set(done))}"
        done += ready


def test_cpu_form_weight_formats(exported, tmp_path):
    """The cpu form's three weight formats (8-bit, 7-bit where U8S8 saturates, uint8 U8U8) all pass the structural
    check; 7-bit weights stay within [-64, 64], U8U8 weights are uint8 with their own zero points."""
    from edgetl.calibration import calibrate, calibration_items
    from edgetl.calibration._ort import private_copy
    from edgetl.card import ModelCard
    from edgetl.quantize.graph import CPU_WEIGHTS, default_cpu_weights, load_float_model, qdq, shape_inferred

    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    calib = calibrate(run.onnx, calibration_items(run, card, None, 32), card, "images", "minmax", tmp_path, 32)
    base = shape_inferred(private_copy(load_float_model(run.onnx).path, tmp_path))
    assert default_cpu_weights() == ("int8 7-bit" if cpu_int8_isa()["int8_saturates"] else "int8")
    for weights in CPU_WEIGHTS:
        proto = qdq(base, calib, "cpu", exclude=[], weights=weights)
        check_graph(proto, "cpu")
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        wdq = next(n for n in proto.graph.node if n.output[0] == conv.input[1])
        q, zp = inits[wdq.input[0]], inits[wdq.input[2]]
        if weights == "uint8":
            assert q.dtype == zp.dtype == np.uint8 and zp.any()
        else:
            assert q.dtype == np.int8 and not zp.any()
            assert np.abs(q.astype(int)).max() == (64 if weights == "int8 7-bit" else 127)


def test_greedy_exclusion_gives_up_after_patience_layers_that_do_not_help(monkeypatch):
    """Each greedy try is a full scoring: past PATIENCE useless layers in a row the search stops (on the real
    Lite0 the tail of the ranking cost 14 s a try and ran on for minutes)."""
    import numpy as np

    from edgetl.quantize import sensitivity as S
    from edgetl.quantize.report import Sensitivity
    from tests.conftest import Recorder

    fp32 = np.eye(4)[[0, 1, 2, 3] * 5] * 5.0
    tried: list[list[str]] = []

    class Scorer:  # 20 images; top-1 rises only when layer "c1" is float
        y, fp32_logits, fp32_top1 = fp32.argmax(1), fp32, 1.0

        def subset(self, n):
            return self

        def drop(self, top1):
            return round((self.fp32_top1 - top1) * 100, 6)

        def score(self, proto, scoring):
            good = 16 + 2 * ("c1" in proto)
            logits = fp32.copy()
            logits[good:] = np.roll(logits[good:], 1, axis=1)
            return good / 20, logits

    ranked = [Sensitivity(node=f"c{i}", top1_if_float=0.8, gain=0.0, kl_if_float=0.0) for i in range(10)]
    ref_kl = S._kl_to_fp32(Scorer(), Scorer().score([], "exact")[1])  # the fully quantized model's, as the scan gives
    monkeypatch.setattr(S, "sensitivity", lambda *a, **k: (ranked, None, ref_kl))
    monkeypatch.setattr(S, "qdq", lambda base, calib, target, exclude, weights=None: tried.append(exclude) or exclude)
    events = Recorder()
    best = S.Quantized(proto=[], top1=0.8, logits=Scorer().score([], "exact")[1])
    out = S.exclude_sensitive(None, None, "tensorrt", best, Scorer(), 1.0, events)
    assert [e.node for e in out.excluded] == ["c1"] and out.top1 == 0.9
    assert [t[-1] for t in tried] == ["c0", "c1", "c2", "c3", "c4", "c5"]  # c1 helped, then 4 misses in a row
    assert f"stopped: the next {S.PATIENCE} most sensitive layers did not raise top-1" in " ".join(events.messages)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_float_node_edit_computes_what_quantizing_without_the_node_does(exported, tmp_path, target):
    """The sensitivity scan edits the quantized graph instead of quantizing anew per layer: for every candidate the
    edited graph must compute what ONNX Runtime's quantizer gives with that node excluded."""
    import numpy as np

    from edgetl.calibration import calibrate, calibration_items
    from edgetl.calibration._ort import private_copy
    from edgetl.card import ModelCard
    from edgetl.data import load_arrays, read_splits
    from edgetl.quantize.graph import DATA_MOVEMENT_OPS, float_node, load_float_model, qdq, quantized_nodes, \
        shape_inferred
    from edgetl.quantize.scoring import Scorer

    run = RunDir(exported)
    card = ModelCard.from_onnx(run.onnx)
    calib = calibrate(run.onnx, calibration_items(run, card, None, 32), card, "images", "minmax", tmp_path, 32)
    base = shape_inferred(private_copy(load_float_model(run.onnx).path, tmp_path))
    x, y = load_arrays(read_splits(run.splits)[1], card, limit=16)
    scorer = Scorer(x=x, y=y, source="val", card=card, threads=2)
    full = qdq(base, calib, target, exclude=[])
    quantized = quantized_nodes(full)
    layers = [n.name for n in base.graph.node if n.op_type not in DATA_MOVEMENT_OPS and n.name in quantized]
    assert len(layers) > 10
    for name in layers[:3] + layers[-3:]:  # the stem, the middle, the head
        edited = float_node(full, base, name)
        assert name not in quantized_nodes(edited) and quantized_nodes(edited) == quantized - {name}
        check_graph(edited, target)
        ref = scorer.logits(qdq(base, calib, target, exclude=[name]).SerializeToString(), exact=True)
        got = scorer.logits(edited.SerializeToString(), exact=True)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), name


def test_a_drop_of_exactly_the_budget_is_within_it():
    """0.84 - 0.83 is 1.0000000000000009 points in floats: the demo's int8 once ended 'over max_drop 1.0' there."""
    import numpy as np

    from edgetl.quantize.scoring import Scorer

    scorer = Scorer(x=np.zeros((100, 1)), y=np.zeros(100, dtype=int), source="s", card=None, threads=1,
                    fp32_top1=0.84)
    assert (0.84 - 0.83) * 100 > 1.0 and scorer.drop(0.83) == 1.0 and scorer.drop(0.84) == 0.0
