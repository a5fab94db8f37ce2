"""What an engine is: names, the sidecar schema, the mismatch rule, finding a runnable engine in a run."""

from __future__ import annotations

import hashlib

import pytest

from edgetl.tensorrt import engine as E
from edgetl.card import ModelCard
from edgetl.errors import EngineMismatch, RunDirError
from edgetl.io import sha256_file, write_bytes, write_json
from edgetl.portable import engines as P
from edgetl.portable.jetson import l4t_release, parse_l4t
from edgetl.rundir import RunDir

FACTS = {"library": "tensorrt", "library_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7",
         "cuda_driver": "12.6", "l4t_release": "R36.4.0"}


def _sidecar(engine: bytes = b"engine bytes", **over) -> dict:
    side = P.make_sidecar(library="tensorrt", library_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7",
                          cuda_driver="12.6", l4t_release="R36.4.0", precision="fp32",
                          profile={"input": "images", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]},
                          source_onnx="model.onnx", source_onnx_sha256="a" * 64,
                          engine_sha256=hashlib.sha256(engine).hexdigest(), builder="edgetl build",
                          edgetl_version="0.1.0", card=None, built_at="2026-11-21T00:00:00+00:00", build_seconds=1.234)
    side.update(over)
    return side


def test_engine_names(tmp_path):
    run = RunDir(tmp_path)
    assert P.slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert P.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert E.engine_dir(run, "Orin", "tensorrt", "10.3.0.30") == tmp_path / "engines" / "orin-trt10.3.0.30"
    assert E.engine_dir(run, "sm86 sm89", "tensorrt_rtx", "1.7.1.116") == tmp_path / "engines" / "sm86-sm89-trtrtx1.7.1.116"
    assert E.engine_file(run, FACTS, "int8") == tmp_path / "engines" / "orin-trt10.3.0.30" / "model.int8.plan"
    assert E.sidecar_path(tmp_path / "e" / "model.int8.plan") == tmp_path / "e" / "model.int8.json"


def test_parse_l4t(tmp_path):
    line = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
    assert parse_l4t(line) == "R36.4.0"
    assert parse_l4t("# R35 (release), REVISION: 5.0, GCID: 1\n") == "R35.5.0"
    assert parse_l4t("garbage") is None
    f = tmp_path / "nv_tegra_release"
    f.write_text(line)
    assert l4t_release(str(f)) == "R36.4.0"
    assert l4t_release(str(tmp_path / "absent")) is None


def test_engine_mismatch_rules():
    side = _sidecar()
    assert E.engine_mismatch(side, FACTS) is None
    other_gpu = {**FACTS, "gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    assert E.engine_mismatch(side, other_gpu) == ("built for Orin (sm 8.7), TensorRT 10.3.0.30, "
                                                  "this is NVIDIA GeForce RTX 4090 (sm 8.9), TensorRT 10.3.0.30")
    assert E.engine_mismatch(side, {**FACTS, "compute_capability": "7.2"})  # same name, other capability
    newer = {**FACTS, "library_version": "10.7.0.23"}
    assert "TensorRT 10.3.0.30, this is Orin (sm 8.7), TensorRT 10.7.0.23" in E.engine_mismatch(side, newer)
    # version-compatible: the same or a later TensorRT of the same major, or 11.x for a 10.x engine
    # (TensorRT 11's support matrix); never an older one, never another GPU
    vc = {**side, "version_compatible": True}
    assert E.engine_mismatch(vc, newer) is None
    assert E.engine_mismatch(vc, {**FACTS, "library_version": "11.4.0.5"}) is None
    assert E.engine_mismatch(vc, {**FACTS, "library_version": "10.1.0.27"})
    assert E.engine_mismatch(vc, {**FACTS, "library_version": "12.0.0.1"})
    assert E.engine_mismatch({**vc, "library_version": "11.4.0.5"}, {**FACTS, "library_version": "10.9.0.1"})
    assert E.engine_mismatch(vc, other_gpu)
    # another library never matches
    assert "tensorrt_rtx" in E.engine_mismatch(side, {**FACTS, "library": "tensorrt_rtx"})


def test_rtx_mismatch_rule():
    side = _sidecar(library="tensorrt_rtx", library_version="1.7.1.116", gpu_name=None, compute_capability=None,
                    target_compute_capabilities=["8.6", "8.9", "12.0"])
    here = {"library": "tensorrt_rtx", "library_version": "1.7.1.116", "gpu_name": "NVIDIA GeForce RTX 4090",
            "compute_capability": "8.9"}
    assert E.engine_mismatch(side, here) is None
    assert "8.6, 8.9, 12.0" in E.engine_mismatch(side, {**here, "compute_capability": "7.5"})
    assert E.engine_mismatch(side, {**here, "library_version": "1.8.0.1"})


def test_sidecar_roundtrip_and_refusals(exported_copy, tmp_path):
    run = RunDir(exported_copy("sidecar"))
    card = ModelCard.from_onnx(run.onnx)
    engine = b"not really an engine, but bytes with a hash"
    side = _sidecar(engine, card=card.model_dump(mode="json"))
    plan = E.engine_file(run, FACTS, "fp32")
    write_bytes(plan, engine)
    write_json(E.sidecar_path(plan), side)

    back = E.read_sidecar(plan)
    assert back == side  # the schema keeps every key and value the portable writer puts in
    assert back["build_seconds"] == 1.23 and back["target_compute_capabilities"] == ["8.7"]
    assert ModelCard.model_validate(back["card"]) == card  # the card travels into the sidecar
    assert E.find_engine(run, "fp32", FACTS) == plan

    E.check_engine(plan, back, FACTS, sha256_file(plan))  # same machine, same bytes: accepted
    with pytest.raises(EngineMismatch) as e:
        E.check_engine(plan, back, {**FACTS, "gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"})
    assert "built for Orin (sm 8.7)" in e.value.message and "this is NVIDIA A100-SXM4-40GB" in e.value.message
    assert e.value.hint == "rebuild it here with `edgetl build`"
    plan.write_bytes(engine + b"tampered")
    with pytest.raises(EngineMismatch, match="SHA-256 differs"):
        E.check_engine(plan, back, FACTS, sha256_file(plan))
    write_json(E.sidecar_path(plan), {**side, "precision": "int4"})
    with pytest.raises(EngineMismatch, match="invalid engine sidecar: precision"):
        E.read_sidecar(plan)
    write_json(E.sidecar_path(plan), {**side, "format": "edgetl-engine/1"})
    with pytest.raises(EngineMismatch, match="it says edgetl-engine/1"):
        E.read_sidecar(plan)
    E.sidecar_path(plan).unlink()
    with pytest.raises(EngineMismatch, match="has no sidecar"):
        E.read_sidecar(plan)


def test_find_engine_accepts_a_compatible_engine_from_another_folder(tmp_path):
    """A version-compatible engine built by TensorRT 10.3 is found and accepted on 10.7 (its folder carries 10.3)."""
    run = RunDir(tmp_path)
    engine = b"vc engine"
    plan = E.engine_file(run, FACTS, "int8")
    write_bytes(plan, engine)
    write_json(E.sidecar_path(plan), _sidecar(engine, precision="int8", version_compatible=True))
    newer = {**FACTS, "library_version": "10.7.0.23"}
    assert E.find_engine(run, "int8", newer) == plan
    write_json(E.sidecar_path(plan), _sidecar(engine, precision="int8"))
    with pytest.raises(EngineMismatch, match="orin-trt10.3.0.30 .built for Orin"):
        E.find_engine(run, "int8", newer)
    with pytest.raises(RunDirError, match="no fp16 engine"):
        E.find_engine(run, "fp16", newer)


def test_a_version_compatible_engine_is_found_through_resolve_model_file(tmp_path, monkeypatch):
    """The bench/eval path (resolve_model_file) finds a --version-compatible engine from TensorRT 10.3 on a
    10.7 or 11.4 runtime (its folder carries 10.3), and refuses a plain one with the reason."""
    from edgetl.runtime import resolve_model_file

    run = RunDir(tmp_path)
    engine = b"vc engine"
    plan = E.engine_file(run, FACTS, "fp16")
    write_bytes(plan, engine)
    write_json(E.sidecar_path(plan), _sidecar(engine, precision="fp16", version_compatible=True))
    for version in ("10.7.0.23", "11.4.0.106"):
        here = {**FACTS, "library_version": version}
        monkeypatch.setattr(E, "machine_facts", lambda library="tensorrt", trt=None, here=here: (
            here if library == "tensorrt" else (_ for _ in ()).throw(E.BackendUnavailable("no RTX here"))))
        assert resolve_model_file(run, "tensorrt", "fp16", "cuda") == plan
    write_json(E.sidecar_path(plan), _sidecar(engine, precision="fp16"))
    with pytest.raises(EngineMismatch, match=r"orin-trt10.3.0.30 \(built for Orin \(sm 8.7\), TensorRT 10.3.0.30, "
                                             r"this is Orin \(sm 8.7\), TensorRT 11.4.0.106\)"):
        resolve_model_file(run, "tensorrt", "fp16", "cuda")


def test_describe_engine_and_rtx_target():
    assert E.rtx_target(["8.6", "8.9", "12.0"]) == "sm86-sm89-sm120"
    assert E.describe_engine(_sidecar()) == "TensorRT 10.3.0.30 engine for Orin (sm 8.7)"
    rtx = _sidecar(library="tensorrt_rtx", library_version="1.7.1.116", target_compute_capabilities=["8.9", "12.0"])
    assert E.describe_engine(rtx) == "TensorRT-RTX 1.7.1.116 engine for RTX GPUs of compute capability 8.9, 12.0"


def test_one_capturing_logger_per_library():
    """TensorRT keeps the first logger a builder or runtime gets and ignores later ones, so edgetl hands out
    one per library (emptied per caller), never a second that would capture nothing."""
    trt = pytest.importorskip("tensorrt_rtx", reason="needs an NVIDIA library's ILogger")
    first = E.capturing_logger(trt)
    first.log(trt.ILogger.Severity.WARNING, "old")
    again = E.capturing_logger(trt)
    assert again is first and again.messages == []
    trt.Builder(again)  # a real builder logs through it
    again.log(trt.ILogger.Severity.ERROR, "boom")
    assert again.lines()[0] == "boom"


def test_plugins_registered_once_per_library(monkeypatch):
    """init_libnvinfer_plugins before the first parser or runtime of a library, once; a library without it
    (an older TensorRT-RTX build, a stripped runtime) is left alone."""
    import types

    monkeypatch.setattr(E, "_PLUGINS_READY", set())
    calls = []
    lib = types.SimpleNamespace(__name__="tensorrt", init_libnvinfer_plugins=lambda lg, ns: calls.append((lg, ns)))
    E.init_plugins(lib, "logger")
    E.init_plugins(lib, "logger")
    assert calls == [("logger", "")]
    E.init_plugins(types.SimpleNamespace(__name__="bare"), "logger")  # nothing to call, no error
