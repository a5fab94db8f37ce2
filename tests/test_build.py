"""edgetl build: everything around TensorRT that runs without it (profile, trtexec line, the missing-TensorRT
message), and a real build + load where TensorRT and a GPU are."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.tensorrt import build as B
from edgetl.tensorrt.engine import read_sidecar, sidecar_path
from edgetl.io import write_bytes, write_json
from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, EdgetlError, EngineMismatch, RunDirError
from edgetl.rundir import RunDir
from edgetl.stage import load_settings


def cfg(**settings) -> B.BuildSettings:
    """Build settings as the command line makes them (a bad value is one EdgetlError naming the setting)."""
    return load_settings(B.BuildSettings, None, settings)


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


needs_no_tensorrt = pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed here")

@pytest.fixture(scope="module")
def exported(exported_copy) -> Path:
    return exported_copy("run")


# -- profile ----------------------------------------------------------------------------------------
def test_parse_batch():
    assert B.parse_batch("1,8,32") == B.Profile(1, 8, 32)
    assert B.parse_batch(" 4 ") == B.Profile(4, 4, 4)
    assert B.parse_batch(B.DEFAULT_BATCH) == B.Profile(1, 1, 32)
    assert B.Profile(1, 8, 32).shapes((3, 224, 224)) == {"min": (1, 3, 224, 224), "opt": (8, 3, 224, 224),
                                                         "max": (32, 3, 224, 224)}
    for bad in ("0,1,2", "8,4,16", "1,16,8", "a,b,c", "1,2", "", "-1"):
        with pytest.raises(EdgetlError, match="batch"):
            B.parse_batch(bad)


def test_profile_checked_against_the_onnx_input(exported, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    name, dims = B.onnx_input(RunDir(exported).onnx)
    assert name == "images" and isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    assert B.check_profile(B.Profile(1, 4, 16), dims, "x") == (3, 32, 32)

    # a graph with a fixed batch of 2 accepts only --batch 2
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, 8, 8])])
    path = tmp_path / "static.onnx"
    onnx.save(helper.make_model(graph), str(path))
    _, sdims = B.onnx_input(path)
    assert B.check_profile(B.Profile(2, 2, 2), sdims, "s") == (3, 8, 8)
    with pytest.raises(EdgetlError, match="fixed batch of 2") as e:
        B.check_profile(B.Profile(1, 1, 8), sdims, "s")
    assert "set batch 2" in e.value.hint
    with pytest.raises(EdgetlError, match="only the batch axis may be dynamic"):
        B.check_profile(B.Profile(1, 1, 1), ["n", 3, "h", 8], "d")


def test_trtexec_line():
    line = lambda *a, **k: shlex.join(B.trtexec_command(*a, **k))  # noqa: E731  (as BuildResult.trtexec records it)
    cmd = line("runs/pets/model.int8.onnx", "runs/pets/engines/orin-trt10.3.0.30/model.int8.plan",
               "images", (3, 224, 224), (1, 8, 32), workspace_mib=2048,
               timing_cache="runs/pets/engines/orin-trt10.3.0.30/timing.cache", opt_level=4)
    assert cmd == ("trtexec --onnx=runs/pets/model.int8.onnx --stronglyTyped --minShapes=images:1x3x224x224 "
                   "--optShapes=images:8x3x224x224 --maxShapes=images:32x3x224x224 --memPoolSize=workspace:2048M "
                   "--timingCacheFile=runs/pets/engines/orin-trt10.3.0.30/timing.cache --builderOptimizationLevel=4 "
                   "--noTF32 --saveEngine=runs/pets/engines/orin-trt10.3.0.30/model.int8.plan --skipInference")
    # TF32 only when asked (--tf32): an "fp32" engine on Ampere or later would otherwise compute in TF32
    assert "--noTF32" not in line("m.onnx", "m.plan", "images", (3, 8, 8), (1, 1, 1), tf32=True)
    extra = line("a b.onnx", "m.plan", "images", (3, 8, 8), (1, 1, 1), version_compatible=True, dla_core=0)
    assert "'--onnx=a b.onnx'" in extra  # quoted for the shell
    assert "--versionCompatible --useDLACore=0 --allowGPUFallback" in extra and "--fp16" not in extra
    assert "--int8" not in cmd and "--fp16" not in cmd  # precision comes from the graph, never builder flags


# -- without TensorRT --------------------------------------------------------------------------------
def test_bad_input_is_refused_before_tensorrt(exported, tmp_path):
    with pytest.raises(EdgetlError, match="setting 'precision': Input should be 'fp32', 'fp16' or 'int8'"):
        B.build(exported, cfg(precision="fp8"))
    with pytest.raises(RunDirError, match="model.int8.onnx is missing") as e:
        B.build(exported, cfg(precision="int8"))
    assert "edgetl quantize --precision int8" in e.value.hint
    with pytest.raises(EdgetlError, match="setting 'batch': .*batch '4,2,1': expected MIN,OPT,MAX"):
        B.build(exported, cfg(batch="4,2,1"))
    with pytest.raises(EdgetlError, match="setting 'opt_level': Input should be less than or equal to 5"):
        B.build(exported, cfg(opt_level=7))
    with pytest.raises(EdgetlError, match="DLA runs fp16 and int8 graphs only") as e:
        B.build(exported, cfg(precision="fp32", dla_core=0))  # every layer would fall back to the GPU
    assert "precision fp16 or int8" in e.value.hint
    assert not RunDir(exported).engines_dir.exists()


@needs_no_tensorrt
def test_build_without_tensorrt_is_one_clear_error(exported):
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed here"):
        B.build(exported, cfg())
    assert not RunDir(exported).engines_dir.exists()


@needs_no_tensorrt
def test_cli_build_without_tensorrt_prints_one_line(exported):
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(exported), "--precision", "fp32"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: TensorRT is not installed here (`import tensorrt` fails)"
    assert lines[1].startswith("  hint: build engines on the target") and len(lines) == 2
    assert not (exported / "engines").exists()


@needs_no_tensorrt
def test_tensorrt_backend_without_tensorrt(exported):
    from edgetl.runtime import create_backend, resolve_model_file

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        resolve_model_file(RunDir(exported), "tensorrt", "fp32", "cuda")
    plan = exported / "engines" / "x" / "model.fp32.plan"
    with pytest.raises(RunDirError, match="no such engine"):
        create_backend("tensorrt", plan, device="cuda").activate()
    # an engine edgetl built elsewhere: the sidecar names its library, which is missing here
    from test_engine import _sidecar

    write_bytes(plan, b"engine bytes")
    write_json(sidecar_path(plan), _sidecar())
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        create_backend("tensorrt", plan, device="cuda").activate()


# -- with TensorRT (run where it is installed) ---------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_build_load_and_parity(exported, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT's Python API")
    from edgetl.data import load_arrays, read_splits
    from edgetl.runtime import create_backend, resolve_model_file

    run = RunDir(shutil.copytree(exported, tmp_path / "run"))
    res = B.build(run.path, cfg(precision="fp32", batch="1,4,8"))
    side = read_sidecar(res.plan)
    assert side["profile"]["max"][0] == 8 and res.trtexec.startswith("trtexec --onnx=")
    assert (res.plan.parent / "timing.cache").stat().st_size > 0
    assert resolve_model_file(run, "tensorrt", "fp32", "cuda") == res.plan
    card = ModelCard.from_onnx(run.onnx)
    x, _ = load_arrays(read_splits(run.splits)[1], card, limit=8)
    with create_backend("onnxruntime", run.onnx) as ort:
        expected = ort.infer(x)
    with create_backend("tensorrt", res.plan, device="cuda") as trt:
        np.testing.assert_allclose(trt.infer(x), expected, atol=1e-2)
    with create_backend("tensorrt", res.plan, device="cuda", cuda_graph=True) as trt:
        for _ in range(2):  # first call captures the graph, the second replays it
            np.testing.assert_allclose(trt.infer(x[:3]), expected[:3], atol=1e-2)
        with pytest.raises(EdgetlError, match="outside the engine's profile"):
            trt.infer(np.concatenate([x, x]))
    # a sidecar from another GPU is refused with one line
    side["gpu_name"] = "Some Other GPU"
    from edgetl.io import write_json

    write_json(res.sidecar, side)
    with pytest.raises(EngineMismatch, match="built for Some Other GPU"):
        create_backend("tensorrt", res.plan, device="cuda").activate()


# -- the CLI with TensorRT-RTX (its builder runs on this CPU) -----------------------------------------------
def test_cli_build_rtx(exported, tmp_path):
    """Settings from --config, an option given on the command line winning, the resolved settings recorded."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is x86-64 Linux/Windows only")
    import tensorrt_rtx
    import yaml

    run = shutil.copytree(exported, tmp_path / "run")
    given = tmp_path / "build.yaml"
    given.write_text("target: rtx\ncompute_capability: [8.6, 8.9]\nbatch: 1,1,8\n")
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(run), "--config", str(given),
                           "--batch", "1,2,4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = run / "engines" / f"sm86-sm89-trtrtx{tensorrt_rtx.__version__}" / "model.fp32.plan"
    assert f"engine: {plan} (" in proc.stdout and "trtexec" not in proc.stdout  # paths are never wrapped
    side = read_sidecar(plan)
    assert side["target_compute_capabilities"] == ["8.6", "8.9"]  # from the file (a YAML list)
    assert side["profile"]["max"][0] == 4  # --batch 1,2,4 wins over the file's 1,1,8
    recorded = yaml.safe_load((run / "settings" / "build.yaml").read_text())
    assert recorded == {**B.BuildSettings().model_dump(mode="json"), "target": "rtx", "compute_capability": "8.6,8.9",
                        "batch": "1,2,4"}
    # an option the flavour cannot honour is one line, not a traceback
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(run), "--target", "rtx", "--dla-core", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: dla_core: TensorRT-RTX has no DLA")
    assert "Traceback" not in proc.stderr
    # a target typer does not know is a usage error (exit 2), before anything runs
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(run), "--target", "jetson"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--target" in proc.stderr and "Traceback" not in proc.stderr
