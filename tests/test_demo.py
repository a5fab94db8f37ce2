"""The README's first command: `edgetl demo` runs the whole chain from the ImageNet backbone (one seed of three,
to keep the suite short)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_stage_through_the_console_script(tmp_path):
    cli = shutil.which("edgetl", path=str(Path(sys.executable).parent)) or shutil.which("edgetl")
    cmd = [cli] if cli else [sys.executable, "-m", "edgetl"]
    out = tmp_path / "demo"
    res = subprocess.run(cmd + ["demo", "--out", str(out), "--seeds", "1"], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    run = out / "transfer-seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    gain = metrics["baseline"]["gain_top1"]
    assert metrics["top1"] > 0.5 and abs(gain - (metrics["top1"] - metrics["baseline"]["top1"])) < 1e-12
    assert gain > 0.2 and metrics["scored_on"] == "test" and metrics["source_weights"]["path"].endswith(
        "efficientnet-lite0-57934424.pth")  # transfer from ImageNet, scored once on the held-out test images
    assert f"{gain * 100:+.1f}" in res.stdout  # the per-seed table shows the measured gain
    report = json.loads((run / "quant_report.json").read_text())
    assert {"int8/tensorrt", "int8/cpu", "fp16"} <= set(report["entries"])
    p_value = report["entries"]["int8/tensorrt"]["paired"]["p_value"]
    assert f"McNemar p={p_value:.2g}" in res.stdout  # the quantize table's notes, as `edgetl quantize` prints them
    for name in ("model.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "model.fp16.onnx", "bench.json", "bench.png"):
        assert (run / name).is_file(), name
    shift = json.loads((run / "shift.json").read_text())  # the last check: the inverted test digits
    assert shift["data"].endswith("inverted-test") and shift["features"]["mmd_p"] < 0.01
    assert "looks like training" in res.stdout and "shifted: accuracy likely lower" in res.stdout
    rows = json.loads((run / "bench.json").read_text())["rows"]
    assert {r["backend"] for r in rows} >= {"torch", "onnxruntime"}
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return
    assert list(run.glob("engines/*/model.int8.plan")), "TensorRT-RTX is installed: the demo builds an engine"
