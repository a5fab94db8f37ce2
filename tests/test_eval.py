"""`edgetl eval` as a stage: EvalSettings from YAML and the command line, the result model, the settings file."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.evaluate.run import EvalResult, eval_run
from edgetl.evaluate.settings import EvalSettings
from edgetl.rundir import RunDir


def test_config_value_is_used_and_the_command_line_wins(run_copy, tmp_path):
    out = tmp_path / "metrics.json"
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"backend": "onnxruntime", "batch_size": 7, "json_path": str(out)}))
    res = CliRunner().invoke(app, ["eval", str(run_copy), "--config", str(config), "--backend", "torch"])
    assert res.exit_code == 0, res.output
    assert "top1" in res.output
    written = json.loads(out.read_text())  # json_path came from the YAML file
    assert written["backend"] == "torch" and written["model_file"].endswith("model.safetensors")  # CLI won
    saved = yaml.safe_load(RunDir(run_copy).settings_file("eval").read_text())
    assert saved == {"data": None, "backend": "torch", "precision": "fp32", "device": "cpu", "batch_size": 7,
                     "json_path": str(out)}
    # the recorded settings repeat the step exactly
    again = eval_run(run_copy, EvalSettings(**saved))
    assert EvalResult.read(out) == again
    metrics = json.loads((run_copy / "metrics.json").read_text())  # finetune scored the same model file
    assert again.top1 == pytest.approx(metrics["top1"]) and again.confusion == metrics["confusion"]


@pytest.mark.parametrize("args", [["--backend", "caffe"], ["--precision", "int4"], ["--device", "tpu"]])
def test_a_value_outside_the_vocabulary_is_refused_by_the_cli(args, tmp_path):
    res = CliRunner().invoke(app, ["eval", str(tmp_path), *args])
    assert res.exit_code == 2 and "Invalid value" in res.output


def test_a_bad_config_value_is_one_error_naming_the_setting(run_copy, tmp_path):
    from edgetl.errors import EdgetlError

    config = tmp_path / "eval.yaml"
    config.write_text("batch_size: 0\n")
    res = CliRunner().invoke(app, ["eval", str(run_copy), "--config", str(config)])
    assert isinstance(res.exception, EdgetlError) and "'batch_size'" in res.exception.message
    assert not RunDir(run_copy).settings_file("eval").exists()
