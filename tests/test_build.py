"""edgetl build: everything around TensorRT that runs without it (profile, names, sidecar, mismatch refusal,
trtexec line, the missing-TensorRT message), and a real build + load where TensorRT and a GPU are."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl import build as B
from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, EdgetlError, EngineMismatch, RunDirError
from edgetl.rundir import RunDir


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


needs_no_tensorrt = pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed here")

FACTS = {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7", "cuda_driver": "12.6",
         "l4t_release": "R36.4.0"}


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
        with pytest.raises(EdgetlError, match="--batch"):
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
    assert "--batch 2" in e.value.hint
    with pytest.raises(EdgetlError, match="only the batch axis may be dynamic"):
        B.check_profile(B.Profile(1, 1, 1), ["n", 3, "h", 8], "d")


# -- names -----------------------------------------------------------------------------------------
def test_engine_dir_naming(tmp_path):
    run = RunDir(tmp_path)
    assert B.slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert B.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert B.engine_dir(run, "Orin", "10.3.0.30") == tmp_path / "engines" / "orin-trt10.3.0.30"
    assert B.engine_file(run, FACTS, "int8") == tmp_path / "engines" / "orin-trt10.3.0.30" / "model.int8.plan"
    assert B.sidecar_path(tmp_path / "e" / "model.int8.plan") == tmp_path / "e" / "model.int8.json"


def test_parse_l4t(tmp_path):
    line = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
    assert B.parse_l4t(line) == "R36.4.0"
    assert B.parse_l4t("# R35 (release), REVISION: 5.0, GCID: 1\n") == "R35.5.0"
    assert B.parse_l4t("garbage") is None
    f = tmp_path / "nv_tegra_release"
    f.write_text(line)
    assert B.l4t_release(str(f)) == "R36.4.0"
    assert B.l4t_release(str(tmp_path / "absent")) is None


# -- mismatch refusal ------------------------------------------------------------------------------
def test_engine_mismatch_rules():
    side = {**FACTS}
    assert B.engine_mismatch(side, FACTS) is None
    other_gpu = {**FACTS, "gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    msg = B.engine_mismatch(side, other_gpu)
    assert msg == ("built for Orin (sm 8.7), TensorRT 10.3.0.30, "
                   "this is NVIDIA GeForce RTX 4090 (sm 8.9), TensorRT 10.3.0.30")
    assert B.engine_mismatch(side, {**FACTS, "compute_capability": "7.2"})  # same name, other capability
    newer = {**FACTS, "tensorrt_version": "10.7.0.23"}
    assert "TensorRT 10.3.0.30, this is Orin (sm 8.7), TensorRT 10.7.0.23" in B.engine_mismatch(side, newer)
    # version-compatible engines run on the same or a later TensorRT of the same major, never an older one
    vc = {**side, "version_compatible": True}
    assert B.engine_mismatch(vc, newer) is None
    assert B.engine_mismatch(vc, {**FACTS, "tensorrt_version": "10.1.0.27"})
    assert B.engine_mismatch(vc, {**FACTS, "tensorrt_version": "11.0.0.1"})
    assert B.engine_mismatch(vc, other_gpu)


def test_sidecar_roundtrip_and_refusals(exported, tmp_path):
    onnx_path = RunDir(exported).onnx
    card = ModelCard.from_onnx(onnx_path)
    engine = b"not really an engine, but bytes with a hash"
    profile = B.Profile(1, 4, 16)
    cmd = B.trtexec_command(onnx_path, "p.plan", "images", (3, 32, 32), profile)
    side = B.make_sidecar(FACTS, "fp32", "images", profile.shapes((3, 32, 32)), onnx_path, engine, 1.234,
                          card.model_dump(mode="json"), cmd)
    plan = tmp_path / "engines" / "orin-trt10.3.0.30" / "model.fp32.plan"
    B.write_engine(plan, engine, side)

    back = B.read_sidecar(plan)
    assert back["format"] == B.SIDECAR_FORMAT and back["gpu_name"] == "Orin" and back["l4t_release"] == "R36.4.0"
    assert back["profile"] == {"input": "images", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}
    assert back["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    assert back["source_onnx"] == "model.onnx" and len(back["source_onnx_sha256"]) == 64
    assert back["build_seconds"] == 1.23 and back["trtexec"] == cmd
    assert ModelCard.from_sidecar(B.sidecar_path(plan)) == card  # the card travels into the sidecar

    from edgetl.io import sha256_file

    B.check_engine(plan, back, FACTS, sha256_file(plan))  # same machine, same bytes: accepted
    with pytest.raises(EngineMismatch) as e:
        B.check_engine(plan, back, {**FACTS, "gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"})
    assert "built for Orin (sm 8.7)" in e.value.message and "this is NVIDIA A100-SXM4-40GB" in e.value.message
    assert e.value.hint == "rebuild it here with `edgetl build`"
    plan.write_bytes(engine + b"tampered")
    with pytest.raises(EngineMismatch, match="SHA-256 differs"):
        B.check_engine(plan, back, FACTS, sha256_file(plan))
    B.sidecar_path(plan).unlink()
    with pytest.raises(EngineMismatch, match="has no sidecar"):
        B.read_sidecar(plan)
    B.sidecar_path(plan).write_text('{"format": "something-else"}')
    with pytest.raises(EngineMismatch, match="not an edgetl engine sidecar"):
        B.read_sidecar(plan)


def test_trtexec_line():
    cmd = B.trtexec_command("runs/pets/model.int8.onnx", "runs/pets/engines/orin-trt10.3.0.30/model.int8.plan",
                            "images", (3, 224, 224), B.Profile(1, 8, 32), workspace_mib=2048,
                            timing_cache="runs/pets/engines/orin-trt10.3.0.30/timing.cache", opt_level=4)
    assert cmd == ("trtexec --onnx=runs/pets/model.int8.onnx --stronglyTyped --minShapes=images:1x3x224x224 "
                   "--optShapes=images:8x3x224x224 --maxShapes=images:32x3x224x224 --memPoolSize=workspace:2048M "
                   "--timingCacheFile=runs/pets/engines/orin-trt10.3.0.30/timing.cache --builderOptimizationLevel=4 "
                   "--saveEngine=runs/pets/engines/orin-trt10.3.0.30/model.int8.plan")
    extra = B.trtexec_command("a b.onnx", "m.plan", "images", (3, 8, 8), B.Profile(1, 1, 1), version_compatible=True,
                              dla_core=0)
    assert "'--onnx=a b.onnx'" in extra  # quoted for the shell
    assert "--versionCompatible --useDLACore=0 --allowGPUFallback" in extra and "--fp16" not in extra
    assert "--int8" not in cmd and "--fp16" not in cmd  # precision comes from the graph, never builder flags


# -- without TensorRT --------------------------------------------------------------------------------
def test_bad_input_is_refused_before_tensorrt(exported, tmp_path):
    with pytest.raises(EdgetlError, match="unknown precision 'fp8'"):
        B.build(exported, precision="fp8")
    with pytest.raises(RunDirError, match="model.int8.onnx is missing") as e:
        B.build(exported, precision="int8")
    assert "edgetl quantize --precision int8" in e.value.hint
    with pytest.raises(EdgetlError, match="--batch"):
        B.build(exported, batch="4,2,1")
    with pytest.raises(EdgetlError, match="--opt-level 7"):
        B.build(exported, opt_level=7)
    with pytest.raises(EdgetlError, match="DLA runs fp16 and int8 graphs only") as e:
        B.build(exported, precision="fp32", dla_core=0)  # every layer would fall back to the GPU
    assert "--precision fp16 or int8" in e.value.hint
    assert not RunDir(exported).engines_dir.exists()


@needs_no_tensorrt
def test_build_without_tensorrt_is_one_clear_error(exported):
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed here"):
        B.build(exported)
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
    be = create_backend("tensorrt", exported / "engines" / "x" / "model.fp32.plan", device="cuda")
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        be.activate()


# -- with TensorRT (run where it is installed) ---------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_build_load_and_parity(exported, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT's Python API")
    from edgetl.data import load_arrays, read_splits
    from edgetl.runtime import create_backend, resolve_model_file

    run = RunDir(shutil.copytree(exported, tmp_path / "run"))
    res = B.build(run.path, precision="fp32", batch="1,4,8")
    side = B.read_sidecar(res.plan)
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
