"""TensorRT for RTX: NVIDIA's real ONNX parser and builder on every graph edgetl writes, on the CPU.

TensorRT-RTX compiles ahead of time with no GPU, so these run in CI (tensorrt_rtx is in the dev extra). Only
running an engine needs an RTX GPU: that test is marked `gpu`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is x86-64 Linux/Windows only (pip install 'edgetl[rtx]')")

from edgetl.tensorrt import build as B  # noqa: E402
from edgetl.tensorrt import engine as E  # noqa: E402
from edgetl.errors import BackendUnavailable, EdgetlError, EngineMismatch  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402
from edgetl.demo.scaffold import FAMILIES  # noqa: E402
from edgetl.stage import load_settings  # noqa: E402

ONNX_FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx")
DEFAULT_CCS = ["8.6", "8.9", "12.0"]


def linked_run(source: Path, dst: Path, files=ONNX_FILES) -> Path:
    """A writable run whose ONNX files are links to a shared, read-only family run (no 100 MB copies)."""
    dst.mkdir(parents=True)
    for name in files:
        os.symlink(source / name, dst / name)
    return dst


def card_props(source: Path) -> list:
    import onnx

    return list(onnx.load(str(source / "model.onnx"), load_external_data=False).metadata_props)


def hand_graph(path: Path, nodes, props, opset: int = 17) -> Path:
    """A small graph with edgetl's image input and card, around `nodes` (which read `images`, write `y`)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.metadata_props.extend(props)
    onnx.save(model, str(path))
    return path


def cfg(**settings) -> B.BuildSettings:
    """Build settings as the command line makes them (a bad value is one EdgetlError naming the setting)."""
    return load_settings(B.BuildSettings, None, settings)


# -- five families x three precisions ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_rtx_parses_and_builds_every_graph_edgetl_writes(family, family_graphs, tmp_path):
    run = linked_run(family_graphs(family), tmp_path / "run")
    layers = {}
    for precision in ("fp32", "fp16", "int8"):
        res = B.build(run, cfg(precision=precision, target="rtx", batch="1,2,4"))
        assert res.plan == run / "engines" / f"sm86-sm89-sm120-trtrtx{rtx.__version__}" / f"model.{precision}.plan"
        data = res.plan.read_bytes()
        assert len(data) > 100_000  # a real engine: weights and compiled code, not a header
        side = E.read_sidecar(res.plan)  # validates against the pydantic schema
        assert side["library"] == "tensorrt_rtx" and side["library_version"] == rtx.__version__
        assert side["target_compute_capabilities"] == DEFAULT_CCS
        assert side["gpu_name"] is None and side["compute_capability"] is None  # built with no GPU
        assert side["precision"] == precision and side["source_onnx"] == B.RunDir(run).onnx_for(precision).name
        assert side["engine_sha256"] == hashlib.sha256(data).hexdigest()
        assert side["profile"]["min"][0] == 1 and side["profile"]["max"] == [4, 3, 32, 32]
        assert side["card"]["model"] == family and side["trtexec"] is None and res.trtexec is None
        assert 0 < side["build_seconds"] < 120 and res.layers > 0
        layers[precision] = res.layers
    # explicit Q/DQ reaches the parser as quantize/dequantize layers: the int8 network has more of them
    assert layers["int8"] > layers["fp32"]
    assert not (run / "engines" / f"sm86-sm89-sm120-trtrtx{rtx.__version__}" / "timing.cache").exists()


def test_compute_capability_targets(family_graphs, tmp_path):
    run = linked_run(family_graphs("resnet18"), tmp_path / "run")
    res = B.build(run, cfg(precision="fp16", target="rtx", compute_capability="8.9", batch="1"))
    assert res.plan.parent.name == f"sm89-trtrtx{rtx.__version__}"
    assert E.read_sidecar(res.plan)["target_compute_capabilities"] == ["8.9"]
    # Turing has no fp32 GEMM in TensorRT-RTX: the builder itself refuses, edgetl says its reason, no file
    with pytest.raises(EdgetlError, match="could not build an engine: .*(Turing|SM75)"):
        B.build(run, cfg(precision="fp32", target="rtx", compute_capability="7.5", batch="1"))
    assert not (run / "engines" / f"sm75-trtrtx{rtx.__version__}" / "model.fp32.plan").exists()
    with pytest.raises(EdgetlError, match="compute_capability 7.0: TensorRT-RTX .* builds for .*8.6, 8.9, 12.0"):
        B.build(run, cfg(precision="fp16", target="rtx", compute_capability="8.6,7.0"))
    for bad in ("86", "sm86", "8.6;8.9", ""):
        with pytest.raises(EdgetlError, match="setting 'compute_capability'"):
            B.build(run, cfg(precision="fp16", target="rtx", compute_capability=bad or ","))


def test_flavour_refusals_come_before_any_nvidia_library(family_graphs, tmp_path, monkeypatch):
    run = linked_run(family_graphs("resnet18"), tmp_path / "run")

    def no_library(_library):
        raise AssertionError("refused too late: an NVIDIA library was imported")

    monkeypatch.setattr(B, "import_flavour", no_library)
    with pytest.raises(EdgetlError, match="TensorRT-RTX has no DLA"):
        B.build(run, cfg(precision="int8", target="rtx", dla_core=0))
    with pytest.raises(EdgetlError, match="version_compatible: a TensorRT-RTX engine runs on the TensorRT-RTX "
                                          "version that built it"):
        B.build(run, cfg(precision="int8", target="rtx", version_compatible=True))
    with pytest.raises(EdgetlError, match="compute_capability: TensorRT builds for the GPU it runs on"):
        B.build(run, cfg(precision="int8", compute_capability="8.6"))
    with pytest.raises(EdgetlError, match="setting 'target': Input should be 'tensorrt' or 'rtx'"):
        B.build(run, cfg(precision="int8", target="jetson"))
    assert not (run / "engines").exists()


# -- what the parser refuses ---------------------------------------------------------------------------
def test_cpu_form_int8_is_refused_before_the_parser(family_graphs, tmp_path, monkeypatch):
    from edgetl.quantize import QuantizeSettings, quantize

    source = family_graphs("resnet18")
    run = linked_run(source, tmp_path / "run", ("model.onnx",))
    shutil.copy(source / "splits.json", run / "splits.json")  # image paths inside are absolute
    quantize(run, QuantizeSettings(precision="int8", target="cpu", max_drop=100.0, batch_size=4))
    cpu_form = RunDir(run).onnx_for("int8", "cpu")
    assert cpu_form.exists()

    # NVIDIA's parser does refuse this form (so refusing it first is not a guess) ...
    logger = E.capturing_logger(rtx)
    network = rtx.Builder(logger).create_network(1 << int(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = rtx.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(cpu_form))
    assert "zero point" in parser.get_error(0).desc().lower()

    # ... and edgetl says so before any parser runs, naming the file to build instead
    monkeypatch.setattr(B, "import_flavour", lambda _lib: pytest.fail("the parser was reached"))
    with pytest.raises(EdgetlError) as e:
        B.build(run, cfg(precision="int8", target="rtx", onnx=cpu_form))
    assert str(e.value.message).count("\n") == 0
    assert "ONNX Runtime (CPU) form of the int8 graph" in e.value.message
    assert str(run / "model.int8.onnx") in e.value.hint and "--precision int8" in e.value.hint
    renamed = shutil.copy(cpu_form, run / "mine.onnx")  # by its metadata, whatever its name
    with pytest.raises(EdgetlError, match="ONNX Runtime .CPU. form of the int8 graph"):
        B.build(run, cfg(precision="int8", target="rtx", onnx=renamed))
    import onnx

    proto = onnx.load(str(renamed))  # an older graph, without the form in its metadata: by content
    for prop in [p for p in proto.metadata_props if p.key in ("edgetl.form", "edgetl.precision")]:
        proto.metadata_props.remove(prop)
    onnx.save(proto, str(renamed))
    with pytest.raises(EdgetlError, match="uint8 .asymmetric. Q/DQ, the ONNX Runtime .CPU. int8 form"):
        B.build(run, cfg(precision="int8", target="rtx", onnx=renamed))
    assert not (run / "engines").exists()


def test_a_graph_of_another_precision_is_refused_before_the_parser(family_graphs, tmp_path, monkeypatch):
    """An fp32 graph built with --precision int8 once became model.int8.plan with a sidecar saying int8."""
    source = family_graphs("resnet18")
    run = linked_run(source, tmp_path / "run", ("model.onnx", "model.int8.onnx"))
    monkeypatch.setattr(B, "import_flavour", lambda _lib: pytest.fail("the parser was reached"))
    with pytest.raises(EdgetlError) as e:
        B.build(run, cfg(precision="int8", target="rtx", onnx=run / "model.onnx"))
    assert e.value.message == f"{run / 'model.onnx'}: the graph is fp32, not int8 (precision lives in the graph)"
    assert "--precision fp32" in e.value.hint and "model.int8.onnx" in e.value.hint
    with pytest.raises(EdgetlError, match="the graph is int8, not fp16"):
        B.build(run, cfg(precision="fp16", target="rtx", onnx=run / "model.int8.onnx"))
    assert not (run / "engines").exists()
    assert B.graph_precision(run / "model.int8.onnx") == "int8" and B.graph_precision(run / "model.onnx") == "fp32"


def test_an_op_the_parser_cannot_take_is_one_line_per_error_and_no_engine(family_graphs, tmp_path):
    from onnx import helper

    run = tmp_path / "run"
    run.mkdir()
    graph = hand_graph(run / "model.onnx", [helper.make_node("Relu", ["images"], ["r"], name="relu0"),
                                            helper.make_node("Unique", ["r"], ["y"], name="uniq0")],
                       card_props(family_graphs("resnet18")))
    with pytest.raises(EdgetlError) as e:
        B.build(run, cfg(precision="fp32", target="rtx", onnx=graph))
    head, *errors = e.value.message.splitlines()
    assert head == f"{graph}: TensorRT-RTX {rtx.__version__}'s ONNX parser cannot take it:"
    assert errors == ["  node 1 'uniq0' (Unique): unsupported node (checkUnique failed)"]
    assert not (run / "engines").exists()


def test_parser_warnings_are_kept_when_parsing_succeeds(family_graphs, tmp_path):
    from onnx import helper

    run = tmp_path / "run"
    run.mkdir()
    graph = hand_graph(run / "model.onnx", [helper.make_node("RandomUniformLike", ["images"], ["r"], seed=3.0),
                                            helper.make_node("Add", ["images", "r"], ["y"])],
                       card_props(family_graphs("resnet18")))
    res = B.build(run, cfg(precision="fp32", target="rtx", onnx=graph, batch="1"))
    assert res.plan.exists()
    seed = [w for w in res.parser_warnings if 'ignores the "seed" field' in w]
    assert len(seed) == 1 and seed[0] in res.warnings


# -- the builder config and the timing cache, on real TensorRT-RTX objects ----------------------------------
def test_new_config_clears_tf32_unless_asked():
    builder = rtx.Builder(E.capturing_logger(rtx))
    assert builder.create_builder_config().get_flag(rtx.BuilderFlag.TF32)  # the library's default: on
    config = B.new_config(rtx, builder, workspace_mib=64, opt_level=2)
    assert not config.get_flag(rtx.BuilderFlag.TF32)
    assert config.builder_optimization_level == 2
    assert config.get_memory_pool_limit(rtx.MemoryPoolType.WORKSPACE) == 64 << 20
    assert B.new_config(rtx, builder, tf32=True).get_flag(rtx.BuilderFlag.TF32)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TensorRT-RTX deprecates its (no-op) timing cache
def test_a_bad_timing_cache_falls_back_to_an_empty_one(tmp_path):
    logger = E.capturing_logger(rtx)
    config = rtx.Builder(logger).create_builder_config()
    warnings: list[str] = []
    corrupt = tmp_path / "timing.cache"
    corrupt.write_bytes(b"not a timing cache")
    assert B.attach_timing_cache(config, corrupt, warnings.append) is not None
    assert any("timing cache" in w.lower() for w in logger.warnings() + warnings)  # said, not fatal

    unreadable = tmp_path / "dir.cache"
    unreadable.mkdir()  # exists, cannot be read as a file
    warnings.clear()
    assert B.attach_timing_cache(config, unreadable, warnings.append) is not None
    assert len(warnings) == 1 and warnings[0].startswith(f"{unreadable}: unreadable timing cache")

    class Refusing:  # a builder that rejects every cache (set_timing_cache returns False)
        def create_timing_cache(self, blob):
            if blob:
                raise RuntimeError("bad blob")
            return object()

        def set_timing_cache(self, cache, ignore_mismatch):
            return False

    warnings.clear()
    assert B.attach_timing_cache(Refusing(), corrupt, warnings.append) is None
    assert [w.split(";")[0] for w in warnings] == [f"{corrupt}: corrupt timing cache (bad blob)",
                                                   "the builder accepts no timing cache here"]


# -- finding and loading an RTX engine -------------------------------------------------------------------
@pytest.fixture(scope="module")
def rtx_engine_run(family_graphs, tmp_path_factory):
    run = linked_run(family_graphs("resnet18"), tmp_path_factory.mktemp("rtx-engine") / "run")
    return run, B.build(run, cfg(precision="int8", target="rtx", batch="1,1,4")).plan


def test_an_rtx_engine_where_no_gpu_is_says_what_it_is_for(rtx_engine_run, fake_cudart):
    from edgetl.runtime import create_backend

    _run, plan = rtx_engine_run
    fake_cudart("no-device")
    with pytest.raises(BackendUnavailable) as e:
        create_backend("tensorrt", plan, device="cuda", precision="int8").activate()
    assert e.value.message == (f"{plan}: a TensorRT-RTX {rtx.__version__} engine for RTX GPUs of compute capability "
                               "8.6, 8.9, 12.0; this machine: no CUDA GPU is visible (cudaErrorNoDevice from CUDA "
                               "runtime 12.4, libcudart-no-device.so)")


def test_rtx_engine_found_through_resolve_model_file(rtx_engine_run, monkeypatch):
    from edgetl.runtime import resolve_model_file

    run, plan = rtx_engine_run
    rtx_4090 = {"library": "tensorrt_rtx", "library_version": rtx.__version__, "gpu_name": "NVIDIA GeForce RTX 4090",
                "compute_capability": "8.9", "cuda_driver": "12.9", "l4t_release": None}

    def facts(here):
        def machine_facts(library="tensorrt", trt=None):
            if library != "tensorrt_rtx":
                raise BackendUnavailable("TensorRT is not installed here (`import tensorrt` fails)")
            return here
        return machine_facts

    monkeypatch.setattr(E, "machine_facts", facts(rtx_4090))
    assert resolve_model_file(RunDir(run), "tensorrt", "int8", "cuda") == plan
    monkeypatch.setattr(E, "machine_facts", facts({**rtx_4090, "gpu_name": "NVIDIA GeForce RTX 2080 Ti",
                                                   "compute_capability": "7.5"}))
    with pytest.raises(EngineMismatch, match="built for RTX GPUs of compute capability 8.6, 8.9, 12.0, this GPU "
                                             r"\(NVIDIA GeForce RTX 2080 Ti\) is 7.5"):
        resolve_model_file(RunDir(run), "tensorrt", "int8", "cuda")


@pytest.mark.gpu
def test_rtx_engine_runs_on_an_rtx_gpu_like_onnxruntime(family_graphs, tmp_path):
    """Where an RTX GPU is: the same Backend code runs the RTX engine and agrees with ONNX Runtime."""
    from edgetl.runtime import create_backend

    try:
        E.machine_facts("tensorrt_rtx")
    except BackendUnavailable as e:
        pytest.skip(f"needs an RTX GPU: {e.message}")
    run = linked_run(family_graphs("resnet18"), tmp_path / "run")
    res = B.build(run, cfg(precision="fp32", target="rtx", batch="1,2,4"))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with create_backend("onnxruntime", run / "model.onnx") as ort:
        expected = ort.infer(x)
    for cuda_graph in (False, True):
        with create_backend("tensorrt", res.plan, device="cuda", cuda_graph=cuda_graph) as trt:
            for batch in (3, 1, 3):  # a batch-size change re-captures the CUDA graph
                np.testing.assert_allclose(trt.infer(x[:batch]), expected[:batch], atol=1e-2)
