"""`edgetl triton`: the model repository's config.pbtxt matches the ONNX graph and parses as Triton's ModelConfig."""

from __future__ import annotations

import re
import shutil

import pytest

from edgetl.errors import DeployError, EdgetlError, RunDirError
from edgetl.stage import load_settings
from edgetl.ship.triton import TritonSettings, triton


def triton_repository(run, out, **settings):
    """The stage with its settings made as the command line makes them (a bad value is one EdgetlError)."""
    return triton(run, load_settings(TritonSettings, None, {"out": out, **settings}))

try:  # Triton's own ModelConfig message, where the client package is installed (pip install tritonclient[grpc])
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
except Exception:  # pragma: no cover - depends on the environment
    model_config_pb2 = None


@pytest.fixture(scope="module")
def exported_run(exported_copy):
    return exported_copy("digits run")


def _onnx_io(path):
    import onnx

    g = onnx.load(str(path)).graph
    init = {t.name for t in g.initializer}

    def desc(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    return [desc(v) for v in g.input if v.name not in init], [desc(v) for v in g.output]


def _parse(text: str):
    if model_config_pb2 is None:
        return None
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_repository_matches_onnx_graph(exported_run, tmp_path):
    import onnx
    import onnxruntime as ort

    repo = triton_repository(exported_run, tmp_path / "repo", max_batch=16, queue_delay_us=250)
    assert repo.models == {"digits_run": "onnxruntime"}
    folder = tmp_path / "repo" / "digits_run"
    assert (folder / "1" / "model.onnx").read_bytes() == (exported_run / "model.onnx").read_bytes()
    assert (folder / "labels.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    text = (folder / "config.pbtxt").read_text()
    (inp_name, inp_type, inp_dims), = _onnx_io(exported_run / "model.onnx")[0]
    (out_name, out_type, out_dims), = _onnx_io(exported_run / "model.onnx")[1]
    assert inp_type == onnx.TensorProto.FLOAT and inp_dims[0] == -1

    cfg = _parse(text)
    if cfg is not None:
        assert cfg.name == "digits_run" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 16
        assert [i.name for i in cfg.input] == [inp_name] and list(cfg.input[0].dims) == inp_dims[1:] == [3, 32, 32]
        assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
        assert [o.name for o in cfg.output] == [out_name] and list(cfg.output[0].dims) == out_dims[1:] == [5]
        assert cfg.output[0].data_type == model_config_pb2.TYPE_FP32 and cfg.output[0].label_filename == "labels.txt"
        assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 250
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert cfg.default_model_filename == "model.onnx"
        import json

        card = json.loads(cfg.parameters["edgetl.card"].string_value)
        assert card["class_names"] == ["0", "1", "2", "3", "4"] and card["input_size"] == [3, 32, 32]
    else:  # no protobuf schema here: check the fields as text
        assert re.search(r'name: "images"\s+data_type: TYPE_FP32\s+dims: \[ 3, 32, 32 \]', text)
        assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 5 \]', text)
        assert "max_batch_size: 16" in text and "max_queue_delay_microseconds: 250" in text

    # the served file is the graph the config describes: onnxruntime agrees on names and shapes
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == inp_name and sess.get_outputs()[0].name == out_name
    assert sess.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_static_batch_graph_has_no_dynamic_batching(exported_run, tmp_path):
    from edgetl.export.run import export
    from edgetl.export.settings import ExportSettings

    run = tmp_path / "static"
    shutil.copytree(exported_run, run)
    export(run, ExportSettings(static_batch=1))
    triton_repository(run, tmp_path / "repo", kind="cpu")
    text = (tmp_path / "repo" / "static" / "config.pbtxt").read_text()
    cfg = _parse(text)
    if cfg is not None:
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert list(cfg.input[0].dims) == [1, 3, 32, 32] and list(cfg.output[0].dims) == [1, 5]
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert "max_batch_size: 0" in text and "dynamic_batching {" not in text


def test_engine_gets_a_tensorrt_model(exported_run, tmp_path):
    """Where `edgetl build` left an engine, the repository serves it too (the plan is copied, not loaded here)."""
    import json

    run = tmp_path / "withengine"
    shutil.copytree(exported_run, run)
    engine_dir = run / "engines" / "orin-trt10.3.0"
    engine_dir.mkdir(parents=True)
    (engine_dir / "model.fp32.plan").write_bytes(b"engine bytes as built on the device")
    # the profile as `edgetl build` records it in the sidecar
    (engine_dir / "model.fp32.json").write_text(json.dumps({"profile": {"input": "images", "min": [1, 3, 32, 32],
                                                                        "opt": [8, 3, 32, 32], "max": [8, 3, 32, 32]}}))
    repo = triton_repository(run, tmp_path / "repo", max_batch=8)
    assert repo.models == {"withengine": "onnxruntime", "withengine_trt_orin-trt10.3.0": "tensorrt"}
    trt = tmp_path / "repo" / "withengine_trt_orin-trt10.3.0"
    assert (trt / "1" / "model.plan").read_bytes() == b"engine bytes as built on the device"
    cfg = _parse((trt / "config.pbtxt").read_text())
    if cfg is not None:
        assert cfg.backend == "tensorrt" and cfg.default_model_filename == "model.plan" and cfg.max_batch_size == 8
        assert cfg.input[0].name == "images"
    with pytest.raises(DeployError, match="built for batches up to 8"):
        triton_repository(run, tmp_path / "repo2", max_batch=32)


def test_bad_input(exported_run, tmp_path):
    with pytest.raises(RunDirError, match="model.int8.onnx"):
        triton_repository(exported_run, tmp_path / "r", precision="int8")
    with pytest.raises(EdgetlError, match="setting 'max_batch'"):
        triton_repository(exported_run, tmp_path / "r", max_batch=0)
    with pytest.raises(EdgetlError, match="setting 'kind': Input should be 'gpu' or 'cpu'"):
        triton_repository(exported_run, tmp_path / "r", kind="tpu")
    with pytest.raises(EdgetlError, match="setting 'queue_delay_us'"):
        triton_repository(exported_run, tmp_path / "r", queue_delay_us=-1)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_cli_triton(exported_run, tmp_path):
    from typer.testing import CliRunner

    from edgetl.cli import app

    res = CliRunner().invoke(app, ["triton", str(exported_run), "--out", str(tmp_path / "repo"), "--name", "digits"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "repo" / "digits" / "config.pbtxt").is_file() and "tritonserver" in res.output


def test_class_name_with_a_line_break_is_refused(exported_run, tmp_path):
    """labels.txt is one class per line: a newline inside a name would shift every later label."""
    import onnx

    from edgetl.card import ModelCard

    run = tmp_path / "newline"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bundles", "devices", "triton"))
    proto = onnx.load(str(run / "model.onnx"))
    card = ModelCard.from_onnx(proto)
    names = list(card.class_names)
    names[1] = "one\nseven"
    card.model_copy(update={"class_names": names}).write_onnx(proto)
    onnx.save(proto, str(run / "model.onnx"))
    # as if exported with that name: the export report records the file's hash, which stages check on load
    from edgetl.io import read_json, sha256_file, write_json

    report = read_json(run / "export_report.json")
    write_json(run / "export_report.json", {**report, "sha256": sha256_file(run / "model.onnx")})
    with pytest.raises(DeployError, match="line break") as err:
        triton_repository(run, tmp_path / "repo")
    assert "\n" not in err.value.message.replace("'one\\nseven'", "")
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_int8_cpu_kind_ships_the_cpu_form(exported_copy, tmp_path):
    """--kind cpu serves the U8S8 form ONNX Runtime runs fast on a CPU; --kind gpu the TensorRT Q/DQ form."""
    import onnx

    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("int8 run")
    quantize(run, QuantizeSettings(precision="int8", target="both", calib_size=32, max_drop=100.0))
    cpu = triton_repository(run, tmp_path / "cpu", precision="int8", kind="cpu", name="m")
    served = tmp_path / "cpu" / "m_int8" / "1" / "model.onnx"
    assert served.read_bytes() == (run / "model.int8.cpu.onnx").read_bytes()
    assert cpu.models == {"m_int8": "onnxruntime"} and "KIND_CPU" in (served.parent.parent / "config.pbtxt").read_text()
    # U8S8: activations quantized to uint8 (the TensorRT form is int8 throughout)
    zero_points = {t.data_type for t in onnx.load(str(served)).graph.initializer if t.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT8 in zero_points
    triton_repository(run, tmp_path / "gpu", precision="int8", kind="gpu", name="m")
    assert (tmp_path / "gpu" / "m_int8" / "1" / "model.onnx").read_bytes() == (run / "model.int8.onnx").read_bytes()


def test_cli_triton_settings_from_a_file_options_winning_and_recorded(exported_run, tmp_path):
    import yaml

    from edgetl.cli import main

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bundles", "devices", "triton", "settings"))
    given = tmp_path / "triton.yaml"
    given.write_text("max_batch: 4\nname: from yaml\nqueue_delay_us: 50\nkind: cpu\n")
    with pytest.raises(SystemExit) as done:
        main(["triton", str(run), "--out", str(tmp_path / "repo"), "--config", str(given), "--queue-delay-us", "250"])
    assert done.value.code == 0
    text = (tmp_path / "repo" / "from_yaml" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in text and "KIND_CPU" in text  # from the file
    assert "max_queue_delay_microseconds: 250" in text  # the option given wins over the file's 50
    recorded = run / "settings" / "triton.yaml"
    assert yaml.safe_load(recorded.read_text()) == {"out": str(tmp_path / "repo"), "precision": "fp32", "max_batch": 4,
                                                     "name": "from yaml", "kind": "cpu", "queue_delay_us": 250}
    # the recorded settings repeat the step exactly
    with pytest.raises(SystemExit) as again:
        main(["triton", str(run), "--config", str(recorded), "--out", str(tmp_path / "repo2")])
    assert again.value.code == 0
    assert (tmp_path / "repo2" / "from_yaml" / "config.pbtxt").read_text() == text


def test_cli_triton_refuses_an_unknown_kind_before_running(exported_run, tmp_path):
    from tests.test_faults import run_script

    res = run_script("triton", exported_run, "--out", tmp_path / "repo", "--kind", "tpu")
    assert res.returncode == 2 and "'tpu' is not one of 'gpu', 'cpu'" in res.stderr.replace('"', "'"), res.stderr
    assert not (tmp_path / "repo").exists()
