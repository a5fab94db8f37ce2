"""The one runtime core on both sides of the wire (issue 22 §2): the trtexec line and the supported TensorRT
range, the typed requests and replies between `edgetl deploy` and the device, the device's plan steps, and
the shared measuring loops. All pure: no TensorRT, no GPU, no ssh."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

import edgetl.portable
from edgetl.portable import measure, protocol, runners
from edgetl.portable.trtexec import OPT_LEVEL, WORKSPACE_MIB, tensorrt_unsupported, trtexec_command
from edgetl.ship.bundle import DEVICE_SCRIPT
from edgetl.ship.deploy import DeploySettings, device_requests


@pytest.fixture(scope="module")
def device():
    """The device script as a bundle imports it: portable/ as a top-level package (the package's own copy)."""
    root = str(Path(edgetl.portable.__file__).parent.parent)
    sys.path.insert(0, root)
    try:
        spec = importlib.util.spec_from_file_location("edgetl_device_core", DEVICE_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(root)
        for name in [m for m in sys.modules if m.split(".")[0] == "portable"]:
            del sys.modules[name]


# -- the trtexec line, for each TensorRT of the supported range -------------------------------------------

@pytest.mark.parametrize("version", ["10.0.1.6", "10.3.0.30", "10.13.0", "11.0.0"])
def test_trtexec_command_across_the_supported_range(version):
    assert tensorrt_unsupported(version) is None
    argv = trtexec_command("m.onnx", "e.plan", "images", (3, 32, 32), (1, 8, 8), version=version,
                           trtexec="/usr/src/tensorrt/bin/trtexec")
    assert argv == ["/usr/src/tensorrt/bin/trtexec", "--onnx=m.onnx", "--stronglyTyped",
                    "--minShapes=images:1x3x32x32", "--optShapes=images:8x3x32x32", "--maxShapes=images:8x3x32x32",
                    f"--memPoolSize=workspace:{WORKSPACE_MIB}M", f"--builderOptimizationLevel={OPT_LEVEL}", "--noTF32",
                    "--saveEngine=e.plan", "--skipInference"]
    assert not {"--int8", "--fp16"} & set(argv)  # precision comes from the graph, never from builder flags


@pytest.mark.parametrize("version", ["8.6.2", "8.5", "9.3.0", "nonsense"])
def test_a_tensorrt_outside_the_range_gets_no_line(version):
    assert tensorrt_unsupported(version)
    with pytest.raises(ValueError):
        trtexec_command("m.onnx", "e.plan", "images", (3, 8, 8), (1, 1, 1), version=version)


def test_a_static_batch_graph_takes_no_shapes_and_the_package_line_is_the_same_function():
    argv = trtexec_command("m.onnx", "e.plan", "images", (3, 8, 8), (4, 4, 4), dynamic=False)
    assert not [a for a in argv if "Shapes=" in a] and "--memPoolSize=workspace:1024M" in argv
    from edgetl.tensorrt import build

    assert build.trtexec_command is trtexec_command  # one trtexec_command in the code base


# -- requests and replies ------------------------------------------------------------------------------

@pytest.mark.parametrize("request_", [
    protocol.Verify("~/edgetl/pets/abc"), protocol.Facts(), protocol.Facts("/home/me/edgetl"),
    protocol.Inventory(("/a", "/b c")), protocol.Build("/x", "int8", 16, True), protocol.Build("/x"),
    protocol.Bench("/x", "onnxruntime", "fp16", "cpu", (1, 4, 32), 0, 7, "results/o/bench.json"), protocol.Bench("/x"),
], ids=lambda r: type(r).__name__)
def test_requests_round_trip_through_the_command_line(request_):
    assert protocol.parse(request_.argv(), here="/here") == request_


def test_bench_requests_are_checked_on_the_device():
    with pytest.raises(protocol.RequestError, match="give integers"):
        protocol.parse(["bench", "--batch-sizes", "1,x"])
    with pytest.raises(protocol.RequestError, match="--batch-sizes must be >= 1"):
        protocol.Bench("/x", batch_sizes=(0,)).check()
    assert protocol.parse(["bench"], here="/b") == protocol.Bench("/b")


def test_replies_round_trip_and_print_as_before():
    built = protocol.BuildReply("e/orin/model.int8.plan", "e/orin/model.int8.json", False, "trtexec")
    assert built.to_dict() == {"engine": "e/orin/model.int8.plan", "sidecar": "e/orin/model.int8.json",
                               "reused": False, "builder": "trtexec"}  # no reused_from unless adopted
    assert protocol.BuildReply.from_dict(built.to_dict()) == built
    adopted = protocol.BuildReply("p", "s", True, "trtexec", reused_from="../aaa/p")
    assert protocol.BuildReply.from_dict(adopted.to_dict()) == adopted
    bench = protocol.BenchReply(rows=[{"top1": 1.0}], system={}, reference={}, bundle={"run": "r"}, engine=None)
    assert "written" not in bench.to_dict() and protocol.BenchReply.from_dict(bench.to_dict()) == bench
    with pytest.raises(ValueError, match="has no bundle, engine, reference, rows"):
        protocol.BenchReply.from_dict({"system": {}})


def test_deploy_plans_the_device_requests():
    cfg = DeploySettings(hosts=["jetson"], precision="int8", bench=True, batch_sizes=[1, 8], warmup=2, iterations=9)
    build, bench = device_requests(cfg, "~/edgetl/pets/abc")
    assert build == protocol.Build("~/edgetl/pets/abc", "int8", 8)
    assert bench.argv() == ["bench", "--dir", "~/edgetl/pets/abc", "--backend", "tensorrt", "--precision", "int8",
                            "--device", "auto", "--batch-sizes", "1,8", "--warmup", "2", "--iterations", "9",
                            "--out", "results/tensorrt-int8/bench.json"]
    ort = cfg.model_copy(update={"backend": "onnxruntime", "bench": False})
    assert device_requests(ort, "/b") == (None, None)


# -- the device's plan steps ---------------------------------------------------------------------------

def test_device_plans_a_build(device):
    assert device.plan_build(False, True, None) == "reuse"
    assert device.plan_build(False, False, ("p", "s")) == "adopt"
    assert device.plan_build(False, False, None) == "build"
    assert device.plan_build(True, True, ("p", "s")) == "build"
    assert device.choose_builder(True, None, "8.6.2") == "edgetl build"  # edgetl checks its own TensorRT
    assert device.choose_builder(False, "/usr/bin/trtexec", "10.3.0") == "trtexec"
    with pytest.raises(device.DeviceError, match="neither edgetl nor trtexec"):
        device.choose_builder(False, None, "10.3.0")
    with pytest.raises(device.DeviceError, match="TensorRT 8.6.2 is too old: edgetl needs 10.0 or newer"):
        device.choose_builder(False, "/usr/bin/trtexec", "8.6.2")


def test_device_plans_an_onnxruntime_run(device):
    manifest = {"models": {"fp32": "model.onnx", "int8": "model.int8.onnx", "int8-cpu": "model.int8.cpu.onnx"},
                "files": {f: {} for f in ("model.onnx", "model.int8.onnx", "model.int8.cpu.onnx")}}
    cpu_only, gpu = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert device.plan_ort(manifest, "fp32", "auto", cpu_only) == ("model.onnx", "cpu")
    assert device.plan_ort(manifest, "fp32", "auto", gpu) == ("model.onnx", "cuda")
    with pytest.raises(device.DeviceError, match="onnxruntime is not installed"):
        device.plan_ort(manifest, "fp32", "cpu", None)


def test_the_provider_rule_is_one():
    assert runners.ort_device("auto", ["CPUExecutionProvider"]) == "cpu"
    assert runners.ort_device("cuda:1", []) == "cuda"
    assert runners.ort_missing("cuda", ["CPUExecutionProvider"]).startswith("CUDAExecutionProvider is not available")
    assert "unknown device 'npu'" in runners.ort_missing("npu", ["CPUExecutionProvider"])
    from edgetl.runtime.onnxruntime_backend import OnnxRuntimeBackend

    assert OnnxRuntimeBackend.devices == tuple(runners.ORT_PROVIDERS)


# -- measuring ------------------------------------------------------------------------------------------

def test_top1_pads_for_a_fixed_batch_and_time_calls_counts(monkeypatch):
    x = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    y = np.array([0, 1, 0, 1, 1])
    seen = []

    def run(xb):
        seen.append(len(xb))
        return np.stack([1 - xb.reshape(-1) % 2, xb.reshape(-1) % 2], axis=1)  # odd -> class 1

    assert measure.top1(run, x, y, 2) == pytest.approx(0.8) and seen == [2, 2, 1]
    seen.clear()
    assert measure.top1(run, x, y, 2, fixed_batch=4) == pytest.approx(0.8) and seen == [4, 4]
    clock = iter(range(100))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    calls = []
    secs = measure.time_calls(lambda: calls.append(1), warmup=3, iterations=4)
    assert len(calls) == 7 and secs.tolist() == [1.0] * 4


def _graph_with(path: Path, props: dict, initializer_floats: int = 0) -> Path:
    """A one-node ONNX graph with these metadata_props (and an initializer of that many floats: a large field
    the reader must skip over)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(initializer_floats, np.float32), "w")] if initializer_floats else []
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=inits)
    model = helper.make_model(graph)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_metadata_is_read_without_onnx_as_onnx_reads_it(tmp_path):
    import onnx

    from edgetl.portable.onnxmeta import NotOnnx, metadata_props

    props = {"edgetl.precision": "int8", "edgetl.form": "qdq-u8s8", "note": "ünïcode [x]"}
    path = _graph_with(tmp_path / "m.onnx", props, initializer_floats=300_000)
    assert metadata_props(path) == props == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata_props(_graph_with(tmp_path / "bare.onnx", {})) == {}
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:1000])  # ends inside the initializer
    with pytest.raises(NotOnnx):
        metadata_props(cut)


def test_the_device_refuses_a_graph_whose_metadata_says_another_form(device, tmp_path):
    """An fp32 graph under the int8 name (a hand-edited bundle): the device refuses it in one line before a
    build or a session; the right graph, and a graph with no form recorded, pass."""
    fp32_as_int8 = _graph_with(tmp_path / "model.int8.onnx", {"edgetl.precision": "fp32", "edgetl.form": "fp32"})
    with pytest.raises(device.DeviceError, match=r"model.int8.onnx: the graph is fp32, not int8 .*edgetl bundle"):
        device.check_form(fp32_as_int8, "int8", "tensorrt")
    cpu_form = _graph_with(tmp_path / "model.int8.cpu.onnx", {"edgetl.precision": "int8", "edgetl.form": "qdq-u8s8"})
    with pytest.raises(device.DeviceError, match=r"it is the ONNX Runtime \(CPU\) form"):
        device.check_form(cpu_form, "int8", "tensorrt")  # TensorRT builds the S8S8 form only
    device.check_form(cpu_form, "int8")  # onnxruntime runs either int8 form
    device.check_form(_graph_with(tmp_path / "old.onnx", {}), "fp32", "tensorrt")
