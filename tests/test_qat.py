"""Quantization-aware training after the layer search (`edgetl quantize --qat`): a real MobileNetV3 (squeeze-excite,
hard-swish) trained on the digits, QAT'd with NVIDIA ModelOpt on the CPU, its graph checked by onnx.checker,
edgetl's placement rules and TensorRT-RTX's parser and builder, and scored against the PTQ graph.

The budget is one no int8 model meets (max_drop -50: 50 points above fp32), so the layer search always ends over
it and QAT always runs; what is asserted is QAT against PTQ, the graph, and the report.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnx
import pytest

from edgetl.errors import QuantizeBudgetMissed, QuantizeError
from edgetl.quantize import QuantizeSettings, check_graph, quantize, read_report
from edgetl.stage import Events

from test_qdq_placement import Graph

MOBILE = "mobilenetv3_small_050"  # the run test_export trains too (cached per session)
UNREACHABLE = -50.0
# 2 epochs at 3e-4: the 5-epoch digits run is undertrained (about 65% top-1), and with 1 epoch at 1e-4 QAT's
# int8 top-1 landed a few images either side of PTQ's depending on torch's thread count; here it lands 10-16
# points above PTQ's with 1 or 2 threads (much of it the extra training: see the report's float_top1)
SETTINGS = dict(max_drop=UNREACHABLE, qat=True, qat_epochs=2, qat_lr=3e-4, calib_size=64, batch_size=16, threads=2)


def _exported(train_run, folder: Path) -> Path:
    from edgetl.export.run import export

    run = folder / "run"
    shutil.copytree(train_run(MOBILE), run)
    export(run)
    return run


@pytest.fixture(scope="module")
def qat_run(train_run, tmp_path_factory):
    """(run, result): both int8 forms quantized with QAT after a missed budget."""
    pytest.importorskip("modelopt.torch.quantization", reason="the qat extra: pip install -e '.[qat]'")
    run = _exported(train_run, tmp_path_factory.mktemp("qat"))
    with pytest.raises(QuantizeBudgetMissed) as missed:
        quantize(run, QuantizeSettings(target="both", **SETTINGS))
    return run, missed.value.result


def test_qat_scores_at_least_ptq_and_writes_a_checked_tensorrt_graph(qat_run):
    run, result = qat_run
    e = result.entries["int8/tensorrt"]
    q = e.qat
    assert q is not None and q.epochs == 2 and q.library.startswith("nvidia-modelopt ")
    assert q.top1 >= q.ptq_top1 and q.kept, (q.ptq_top1, q.top1)
    assert e.top1 == q.top1 and e.drop == q.drop and e.over_budget  # the entry describes the written (QAT) graph
    assert q.ptq_model_sha256 != e.model_sha256 and e.excluded  # PTQ's float layers stay float in the QAT graph
    assert q.train_images > 0 and q.minutes > 0 and len(q.train_log) == 2 and q.paired.n == e.eval_n
    assert 0 < q.float_top1 <= 1
    path = run / "model.int8.onnx"
    from edgetl.io import sha256_file

    assert sha256_file(path) == e.model_sha256
    onnx.checker.check_model(str(path), full_check=True)
    check_graph(path, "tensorrt")  # edgetl's placement rules and Q/DQ structure
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["edgetl.precision"] == "int8" and props["edgetl.form"] == "qdq-s8s8"
    # fake quantizers sat exactly on the convolutions and weighted MatMuls the graph quantizes
    g = Graph(path)
    quantized = [n for n in g.nodes if n.op_type in ("Conv", "Gemm", "MatMul") and g.dq(n.input[0])]
    assert q.fake_quantized_modules == len(quantized) and q.trained_in_float == []
    head = g.of("Gemm")
    assert len(head) == 1 and not any(g.quantized(head[0]))  # the classifier stays float, as in PTQ
    assert g.no_dq_into("HardSwish", "HardSigmoid", "Mul", "ReduceMean")  # squeeze-excite and activations float
    assert read_report(run).entries["int8/tensorrt"].qat == q  # the report keeps both, readable


def test_qat_cpu_form_is_written_from_the_same_training(qat_run):
    run, result = qat_run
    cpu, trt = result.entries["int8/cpu"], result.entries["int8/tensorrt"]
    assert cpu.qat is not None and cpu.qat.train_log == trt.qat.train_log  # one training, both forms
    assert cpu.qat.kept == (cpu.qat.top1 >= cpu.qat.ptq_top1)
    onnx.checker.check_model(str(run / "model.int8.cpu.onnx"), full_check=True)
    check_graph(run / "model.int8.cpu.onnx", "cpu")


def test_tensorrt_rtx_parses_and_builds_the_qat_graph(qat_run, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is x86-64 Linux/Windows only (pip install 'edgetl[rtx]')")
    from edgetl.stage import load_settings
    from edgetl.tensorrt import build as B

    run, _ = qat_run
    res = B.build(run, load_settings(B.BuildSettings, None, dict(precision="int8", target="rtx", batch="1")))
    assert res.plan.exists() and res.plan.stat().st_size > 0


def test_the_quantize_table_shows_ptq_and_qat_side_by_side(qat_run):
    from edgetl.presentation.quantize import quant_notes

    _, result = qat_run
    notes = quant_notes(result.model_dump(mode="json")["entries"])
    line = next(n for n in notes if n.startswith("model.int8.onnx: PTQ top-1"))
    assert "vs QAT" in line and "after 2 epoch(s)" in line and "holds the QAT graph" in line


class _InterruptQat(Events):
    def progress(self, task: str, done: int, total: int | None = None) -> None:
        if task.startswith("QAT epoch") and done >= 1:
            raise KeyboardInterrupt


def test_ctrl_c_in_qat_leaves_the_ptq_graph_and_its_entry(qat_run, tmp_path):
    """Interrupted in the first QAT step: the PTQ graph written just before stays, matching its report entry, and
    no temporary file is left in the run."""
    from edgetl.io import sha256_file

    run = tmp_path / "run"
    shutil.copytree(qat_run[0], run)
    for name in ("model.int8.onnx", "model.int8.cpu.onnx", "quant_report.json"):
        (run / name).unlink()
    before = set(run.iterdir())
    with pytest.raises(KeyboardInterrupt):
        quantize(run, QuantizeSettings(target="tensorrt", **SETTINGS), _InterruptQat())
    e = read_report(run).entries["int8/tensorrt"]
    assert e.qat is None and e.over_budget and sha256_file(run / "model.int8.onnx") == e.model_sha256
    assert set(run.iterdir()) - before <= {run / "model.int8.onnx", run / "quant_report.json", run / "settings"}


def _cli(capsys, *args: str) -> tuple[int, str]:
    from edgetl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["quantize", *args])
    return exit_.value.code, capsys.readouterr().err


def test_qat_without_the_extra_or_for_fp16_is_one_line(tmp_path, monkeypatch, capsys):
    code, err = _cli(capsys, str(tmp_path), "--precision", "fp16", "--qat")
    assert code == 1 and err.startswith("error: qat trains for int8; precision is fp16\n")
    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)
    with pytest.raises(QuantizeError, match=r'pip install -e "\.\[qat\]"'):
        quantize(tmp_path, QuantizeSettings(qat=True))
    code, err = _cli(capsys, str(tmp_path), "--qat")
    assert code == 1 and 'pip install -e ".[qat]"' in err and "Traceback" not in err and len(err.splitlines()) == 2
    for bad in (["--qat-epochs", "0"], ["--qat-lr", "0"], ["--qat-batch-size", "0"]):
        code, err = _cli(capsys, str(tmp_path), "--qat", *bad)
        assert code != 0 and f"setting '{bad[0][2:].replace('-', '_')}'" in err, err


def test_shift_checks_the_qat_graph_and_says_where_its_activations_come_from(qat_run, digits):
    """`edgetl shift` reads the QAT graph's ranges against model.onnx's activations (the same tensor names: one
    exporter) and says that they are the fp32 weights', not the QAT weights'."""
    from conftest import Recorder
    from edgetl.shift import ShiftSettings
    from edgetl.shift.run import shift

    run, _ = qat_run
    said = Recorder()
    result = shift(run, ShiftSettings(data=str(Path(digits["source"]) / "val"), permutations=200), said)
    c = result.coverage
    assert c.model_file == "model.int8.onnx" and len(c.tensors) >= 10
    assert any("quantization-aware training" in w for w in said.warnings), said.warnings
    assert result.features.verdict == "looks like training"  # the run's own val images
