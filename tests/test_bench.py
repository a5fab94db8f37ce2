"""edgetl bench on a real tiny run: torch and onnxruntime rows (fp32 and a real int8 graph), skips with reasons."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.bench import BenchSettings, bench, compare_rows, latency_stats, time_infer
from edgetl.errors import EdgetlError
from edgetl.rundir import RunDir


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _int8_cpu_graph(run: RunDir) -> None:
    """model.int8.cpu.onnx written by edgetl's own quantizer (U8S8, the CPU form), calibrated on 32 images."""
    from edgetl.quantize import QuantizeSettings, quantize

    quantize(run.path, QuantizeSettings(precision="int8", target="cpu", calib_size=32, max_drop=100.0))


@pytest.fixture(scope="module")
def bench_dir(trained_run, tmp_path_factory) -> Path:
    from edgetl.export.run import export

    dst = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(trained_run, dst)
    export(dst)
    _int8_cpu_graph(RunDir(dst))
    return dst


def bench_run(run, write: bool = True, **settings) -> dict:
    """bench() with settings given as keywords, its result as the bench.json document."""
    return bench(run, BenchSettings(**settings), write=write).model_dump(mode="json")


@pytest.fixture(scope="module")
def result(bench_dir) -> dict:
    return bench_run(bench_dir, backends="torch,onnxruntime,tensorrt", batch_sizes="1,4", warmup=2, iterations=12)


def _row(result, backend, precision, bs):
    return next(r for r in result["rows"] if (r["backend"], r["precision"], r["batch_size"]) == (backend, precision, bs))


def test_rows_cover_every_model_file(result):
    got = {(r["backend"], r["precision"], r["batch_size"]) for r in result["rows"]}
    assert got == {("torch", "fp32", 1), ("torch", "fp32", 4), ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 4),
                   ("onnxruntime", "int8", 1), ("onnxruntime", "int8", 4)}
    # on the CPU the onnxruntime int8 row runs the cpu-form graph, and says so
    assert _row(result, "onnxruntime", "int8", 1)["model_file"] == "model.int8.cpu.onnx"
    assert _row(result, "onnxruntime", "fp32", 1)["model_file"] == "model.onnx"
    assert _row(result, "torch", "fp32", 1)["model_file"] == "model.safetensors"
    assert _row(result, "onnxruntime", "fp32", 1)["provider"] == "CPUExecutionProvider"


def test_latency_numbers_are_consistent(result):
    for r in result["rows"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["iterations"] == 12
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] * 1000 / lat["mean"], rel=1e-3, abs=0.006)  # 2 decimals
        assert r["timed"]


def test_top1_is_the_same_through_every_backend(result, bench_dir):
    from edgetl.evaluate.run import eval_run
    from edgetl.evaluate.settings import EvalSettings

    torch_top1 = eval_run(bench_dir, EvalSettings(backend="torch")).top1
    # the bench scores the run's own validation split: the same number finetune recorded
    assert torch_top1 == pytest.approx(json.loads((bench_dir / "metrics.json").read_text())["top1"], abs=1e-6)
    assert _row(result, "torch", "fp32", 1)["top1"] == pytest.approx(torch_top1, abs=1e-6)
    n = _row(result, "torch", "fp32", 1)["n_images"]
    assert abs(_row(result, "onnxruntime", "fp32", 1)["top1"] - torch_top1) <= 1 / n + 1e-9
    assert result["reference"] == {"top1": pytest.approx(torch_top1, abs=1e-6), "source": "torch fp32 row"}
    int8 = _row(result, "onnxruntime", "int8", 1)
    assert int8["top1_drop"] == pytest.approx(torch_top1 - int8["top1"], abs=1e-6)
    assert abs(int8["top1_drop"]) <= 0.15  # a real quantized model of this one, not a collapsed graph
    assert _row(result, "torch", "fp32", 4)["top1_drop"] == 0
    assert _row(result, "torch", "fp32", 4)["speedup"] == 1.0
    ort = _row(result, "onnxruntime", "fp32", 4)
    assert ort["speedup_vs"] == "torch fp32"
    assert ort["speedup"] == pytest.approx(_row(result, "torch", "fp32", 4)["latency_ms"]["p50"] / ort["latency_ms"]["p50"], rel=1e-2)


def test_each_drop_is_tested_image_by_image_against_the_reference(result):
    """McNemar's counts are the drop itself: (only the reference right - only the row right) / n."""
    tests = result["drop_tests"]
    assert set(tests) == {"torch fp32", "onnxruntime fp32", "onnxruntime int8"}
    assert tests["torch fp32"]["only_reference_right"] == tests["torch fp32"]["only_model_right"] == 0
    for label, t in tests.items():
        backend, precision = label.split()
        row = _row(result, backend, precision, 1)
        assert t["n"] == row["n_images"]
        assert (t["only_reference_right"] - t["only_model_right"]) / t["n"] == pytest.approx(row["top1_drop"], abs=1e-6)
        assert 0 < t["p_value"] <= 1 and t["significant"] == (t["p_value"] < 0.05)


def test_missing_tensorrt_is_one_skip_and_the_rest_ran(result):
    if _tensorrt_importable():
        pytest.skip("tensorrt is installed here")
    trt = [s for s in result["skipped"] if s["backend"] == "tensorrt"]
    assert len(trt) == 1 and "TensorRT is not installed" in trt[0]["reason"]


def test_files_written(result, bench_dir):
    run = RunDir(bench_dir)
    saved = json.loads(run.bench_json.read_text())
    assert len(saved["rows"]) == 6 and saved["system"]["libraries"]["onnxruntime"]
    assert saved["system"]["cpu"]
    md = run.bench_md.read_text()
    assert "| backend | precision | batch |" in md and "model.int8.cpu.onnx" in md and "skipped tensorrt" in md
    assert run.bench_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(bench_dir.glob(".bench*.tmp"))


def test_unknown_names_are_refused_and_unsupported_pairs_are_skipped(bench_dir):
    from edgetl.stage import load_settings

    for bad, match in (({"backends": "torch,caffe"}, "'backends.1'"), ({"precisions": "fp32,fp64"}, "'precisions.1'")):
        with pytest.raises(EdgetlError, match=match):
            load_settings(BenchSettings, None, bad)
    res = bench_run(bench_dir, backends="torch,onnxruntime", precisions="fp32,int8,bf16", batch_sizes="2",
                    warmup=1, iterations=3, write=False)
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in res["skipped"]}
    assert "torch has no int8 path" in reasons[("torch", "int8")]
    assert "torch bf16 on the CPU is not a deployment path" in reasons[("torch", "bf16")]
    assert "edgetl writes no bf16 ONNX" in reasons[("onnxruntime", "bf16")]
    assert {(r["backend"], r["precision"]) for r in res["rows"]} == {("torch", "fp32"), ("onnxruntime", "fp32"),
                                                                     ("onnxruntime", "int8")}


def test_fp16_requested_but_absent_says_how_to_make_it(bench_dir):
    res = bench_run(bench_dir, backends="onnxruntime", precisions="fp32,fp16", warmup=1, iterations=3,
                    write=False)
    fp16 = [s for s in res["skipped"] if s["precision"] == "fp16"]
    if RunDir(bench_dir).onnx_for("fp16").exists():
        pytest.skip("an fp16 graph exists in this run")
    assert "model.fp16.onnx is missing" in fp16[0]["reason"] and "edgetl quantize --precision fp16" in fp16[0]["reason"]


def test_data_with_unknown_classes_still_times(bench_dir, digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits["source"] / "val", data)
    shutil.copytree(digits["target"] / "val" / "7", data / "7")  # a class the 0-4 model never saw
    res = bench_run(bench_dir, data=data, backends="onnxruntime", precisions="fp32", warmup=1, iterations=3,
                    write=False)
    (row,) = res["rows"]
    assert row["top1"] is None and row["latency_ms"]["p50"] > 0
    assert any("classes the model does not know: 7" in n for n in res["notes"])


def test_data_folder_scores_the_same_as_the_split(bench_dir, digits):
    # digits' val folder is the run's validation split, so top-1 must agree
    res = bench_run(bench_dir, data=digits["source"] / "val", backends="onnxruntime", precisions="fp32",
                    warmup=1, iterations=3, write=False)
    split = bench_run(bench_dir, backends="onnxruntime", precisions="fp32", warmup=1, iterations=3,
                      write=False)
    assert res["rows"][0]["top1"] == pytest.approx(split["rows"][0]["top1"])
    assert res["reference"]["source"].startswith("torch fp32 (model.safetensors")


def test_nothing_runnable_raises_and_writes_nothing(bench_dir, tmp_path):
    run = tmp_path / "bare"
    shutil.copytree(bench_dir, run)
    for f in ("model.onnx", "model.int8.cpu.onnx", "bench.json", "bench.md", "bench.png"):
        (run / f).unlink(missing_ok=True)
    with pytest.raises(EdgetlError, match="nothing could run here"):
        bench_run(run, backends="onnxruntime", precisions="fp32")
    assert not (run / "bench.json").exists()


def test_plan_names_the_rows_measured_and_why_the_others_are_refused(tmp_path, monkeypatch):
    from edgetl.bench.plan import fixed_batch_refusal, plan_bench
    from edgetl.runtime import backend_class

    run = RunDir(tmp_path)
    for f in (run.weights, run.onnx_for("fp32"), run.onnx_for("int8", "cpu")):
        f.write_bytes(b"")  # the plan only asks which files exist; nothing is loaded
    plan = plan_bench(run, BenchSettings(backends="torch,onnxruntime", precisions="fp32,int8,fp16",
                                         batch_sizes="1,4", iterations=12))
    assert [(r.backend, r.precision, r.model_file.name, r.device) for r in plan.rows] == [
        ("torch", "fp32", "model.safetensors", "cpu"), ("onnxruntime", "fp32", "model.onnx", "cpu"),
        ("onnxruntime", "int8", "model.int8.cpu.onnx", "cpu")]  # on the CPU, int8 runs the cpu-form graph
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in plan.skipped}
    assert list(reasons) == [("torch", "int8"), ("torch", "fp16"), ("onnxruntime", "fp16")]
    assert "torch has no int8 path" in reasons[("torch", "int8")]
    assert "torch fp16 on the CPU is not a deployment path" in reasons[("torch", "fp16")]
    assert "model.fp16.onnx is missing" in reasons[("onnxruntime", "fp16")]  # asked for by name: says why
    assert plan.batch_sizes == [1, 4] and plan.steps_per_row == 2 * 13 + 1 and plan.total_steps == 3 * 27

    implicit = plan_bench(run, BenchSettings(backends="onnxruntime", duration=0.5))
    assert [r.precision for r in implicit.rows] == ["fp32", "int8"] and implicit.skipped == []  # absent: not asked
    assert implicit.iterations is None and implicit.steps_per_batch == 51  # timed for a duration

    monkeypatch.setattr(backend_class("onnxruntime"), "available", classmethod(lambda cls, device: "no such thing"))
    refused = plan_bench(run, BenchSettings(backends="onnxruntime,torch"))
    assert refused.skipped == [{"backend": "onnxruntime", "precision": None, "reason": "no such thing"}]
    assert [r.backend for r in refused.rows] == ["torch"]
    empty = plan_bench(run, BenchSettings(backends="onnxruntime"))
    assert empty.rows == [] and empty.total_steps == 1  # the progress task still has a size

    assert fixed_batch_refusal(1, None, "model.onnx") is None and fixed_batch_refusal(2, 2, "model.onnx") is None
    assert fixed_batch_refusal(1, 2, "model.onnx") == "batch 1: model.onnx has a fixed batch of 2"


def test_time_infer_counts_and_duration(bench_dir):
    from edgetl.runtime import create_backend

    with create_backend("torch", Path(bench_dir) / "model.safetensors") as be:
        x = np.zeros((2, *be.input_shape()), dtype=np.float32)
        assert len(time_infer(be, x, warmup=1, iterations=7)) == 7
        secs = time_infer(be, x, warmup=0, iterations=None, duration=0.3)
        assert len(secs) >= 10 and secs.sum() >= 0.25


def test_latency_stats_and_batch_parsing():
    s = latency_stats(np.array([0.001, 0.002, 0.003, 0.004]), batch_size=8)
    assert s["latency_ms"]["mean"] == 2.5 and s["latency_ms"]["p50"] == 2.5
    assert s["latency_ms"]["p99"] == pytest.approx(3.97)
    assert s["throughput_ips"] == 3200.0 and s["iterations"] == 4
    from edgetl.stage import load_settings

    assert BenchSettings(batch_sizes="8,1,8").batch_sizes == [1, 8]
    assert BenchSettings(batch_sizes=[4, 2]).batch_sizes == [2, 4]  # a YAML list works too
    for bad in ("0", "a", ""):
        with pytest.raises(EdgetlError, match="'batch_sizes'"):
            load_settings(BenchSettings, None, {"batch_sizes": bad})


def test_flags_make_the_two_known_failures_visible():
    def row(backend, precision, p50, top1):
        return {"backend": backend, "precision": precision, "batch_size": 1, "device": "cuda",
                "latency_ms": {"p50": p50}, "top1": top1}

    rows = [row("torch", "fp32", 4.0, 0.90), row("tensorrt", "fp32", 2.0, 0.90),
            row("tensorrt", "fp16", 1.0, 0.899), row("tensorrt", "int8", 1.0, 0.05)]
    compare_rows(rows, {"top1": 0.90})
    fp16, int8 = rows[2], rows[3]
    assert fp16["speedup"] == 4.0 and fp16["flags"] == []
    assert int8["top1_drop"] == pytest.approx(0.85)
    assert int8["flags"] == ["top-1 85.0 pts below the reference", "int8 no faster than fp16"]


def test_cli_bench_prints_table_and_skips(bench_dir, tmp_path):
    from edgetl.cli import app

    bench_dir = Path(shutil.copytree(bench_dir, tmp_path / "run"))
    res = CliRunner().invoke(app, ["bench", str(bench_dir), "--backends", "onnxruntime,tensorrt", "--precisions", "fp32",
                                   "--iterations", "3", "--warmup", "1"])
    assert res.exit_code == 0, res.output
    assert "ort fp32 bs1" in res.output and "model.onnx" in res.output  # CliRunner's 80 columns: compact table
    assert json.loads((bench_dir / "bench.json").read_text())["settings"]["iterations"] == 3
    if not _tensorrt_importable():
        assert "skipped tensorrt: TensorRT is not installed" in res.output


def test_cli_bench_bad_batch_is_one_line(bench_dir):
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "bench", str(bench_dir), "--batch-sizes", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "'batch_sizes'" in proc.stderr and "'0'" in proc.stderr and "Traceback" not in proc.stderr


def test_system_probe_ignores_failed_commands():
    from edgetl.bench.machine import _run

    # nvidia-smi without a driver exits non-zero with its complaint on stdout: not a GPU name
    assert _run([sys.executable, "-c", "print('no driver loaded'); raise SystemExit(9)"]) is None
    assert _run([sys.executable, "-c", "print(' ok ')"]) == "ok"
    assert _run(["/nonexistent/edgetl-probe"]) is None


def test_cli_config_is_used_the_command_line_wins_and_settings_are_recorded(bench_dir, tmp_path):
    import yaml

    from edgetl.cli import app

    run = Path(shutil.copytree(bench_dir, tmp_path / "run"))
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"backends": ["onnxruntime"], "precisions": ["fp32"], "batch_sizes": [2],
                                      "iterations": 3, "warmup": 1}))
    res = CliRunner().invoke(app, ["bench", str(run), "--config", str(config), "--iterations", "4"])
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "bench.json").read_text())
    assert saved["settings"]["iterations"] == 4 and saved["settings"]["batch_sizes"] == [2]
    assert [(r["backend"], r["precision"], r["batch_size"], r["iterations"]) for r in saved["rows"]] == \
        [("onnxruntime", "fp32", 2, 4)]
    recorded = yaml.safe_load(RunDir(run).settings_file("bench").read_text())
    assert recorded["iterations"] == 4 and recorded["backends"] == ["onnxruntime"] and recorded["warmup"] == 1
    for bad in (["--device", "tpu"], ["--config", str(config), "--device", "gpu"]):
        refused = CliRunner().invoke(app, ["bench", str(run), *bad])
        assert refused.exit_code == 2 and "Invalid value" in refused.output


def test_a_fixed_batch_model_times_only_its_batch(bench_dir, tmp_path):
    from edgetl.export.run import export
    from edgetl.export.settings import ExportSettings

    run = Path(shutil.copytree(bench_dir, tmp_path / "run"))
    export(run, ExportSettings(static_batch=2, parity_images=4, simplify=False))
    res = bench_run(run, backends="onnxruntime", precisions="fp32", batch_sizes="1,2", warmup=1, iterations=3,
                    write=False)
    assert [r["batch_size"] for r in res["rows"]] == [2]
    (skip,) = [s for s in res["skipped"] if s["precision"] == "fp32"]
    assert skip["reason"] == "batch 1: model.onnx has a fixed batch of 2" and skip["model_file"] == "model.onnx"
    assert res["rows"][0]["top1"] is not None  # scored through logits(): every image, in batches of 2
