"""The contract between the package and the device: one sidecar schema and one bench row schema, written by
the device entry point (imported from a real bundle, as a device runs it) and read by the package."""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetl.tensorrt import engine
from edgetl.ship.bundle import make_bundle
from edgetl.errors import EngineMismatch
from edgetl.io import sha256_file
from edgetl.portable.rows import ROW_KEYS

# What a Jetson Orin with JetPack 6.1 reports (CUDA's own GPU name, not the board's)
ORIN = {"library": "tensorrt", "library_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
        "cuda_driver": "12.6", "l4t_release": "R36.4.3"}


@pytest.fixture(scope="module")
def run_and_bundle(exported_copy):
    run = exported_copy("contract")
    return run, make_bundle(run, "fp32", max_images=100_000)  # every validation image: the same set as `edgetl bench`


@pytest.fixture(scope="module")
def device(run_and_bundle):
    """edgetl_device imported from the bundle folder, with the bundle's own portable/ (never edgetl.portable)."""
    _, bundle = run_and_bundle
    sys.path.insert(0, str(bundle.path))
    try:
        module = importlib.import_module("edgetl_device")
        assert Path(module.builders.__file__).parent == bundle.path / "portable"
        yield module
    finally:
        sys.path.remove(str(bundle.path))
        for name in [m for m in sys.modules if m == "edgetl_device" or m.split(".")[0] == "portable"]:
            del sys.modules[name]


@pytest.fixture
def bundle_copy(run_and_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(run_and_bundle[1].path, copy)
    return copy


def test_device_sidecar_loads_in_the_package_and_passes_its_rule(device, bundle_copy):
    manifest = device.load_manifest(bundle_copy)
    plan, sidecar_path = device.engine_paths(bundle_copy, ORIN, "int8" if "int8" in manifest["models"] else "fp32")
    precision = plan.name.split(".")[1]
    # the folder is the package's own name for this machine's engines (same slug, CUDA's GPU name)
    assert plan == engine.engine_file(SimpleNamespace(engines_dir=bundle_copy / "engines"), ORIN, precision)
    assert plan.parent.name == "orin-trt10.3.0"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine bytes of a build on an Orin")
    device.write_sidecar(plan, manifest, precision, ORIN, builder="trtexec",
                         profile=device.profile_for(manifest["io"], 8), build_seconds=61.0,
                         trtexec="/usr/src/tensorrt/bin/trtexec")

    sidecar = engine.read_sidecar(plan)  # the package's pydantic schema: every key, right types
    assert sidecar_path == engine.sidecar_path(plan)
    assert sidecar["format"] == "edgetl-engine/2" and sidecar["builder"] == "trtexec"
    assert sidecar["gpu_name"] == "Orin" and sidecar["compute_capability"] == "8.7"
    assert sidecar["target_compute_capabilities"] == ["8.7"] and sidecar["l4t_release"] == "R36.4.3"
    assert sidecar["source_onnx"] == "model.onnx"
    assert sidecar["source_onnx_sha256"] == sha256_file(bundle_copy / "model.onnx")
    assert sidecar["profile"] == {"input": "images", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                                  "max": [8, 3, 32, 32]}
    assert sidecar["card"] == manifest["card"] and sidecar["build_seconds"] == 61.0
    engine.check_engine(plan, sidecar, ORIN, sha256_file(plan))  # same facts: the package would load it
    with pytest.raises(EngineMismatch, match="Thor"):
        engine.check_engine(plan, sidecar, {**ORIN, "gpu_name": "Thor", "compute_capability": "11.0"})
    # and the device reuses it under the same rule, only for what its profile covers
    onnx_sha = sidecar["source_onnx_sha256"]
    assert device.reusable(plan, onnx_sha, ORIN, 8)
    assert not device.reusable(plan, onnx_sha, ORIN, 16)
    assert not device.reusable(plan, onnx_sha, {**ORIN, "library_version": "10.4.0"}, 8)
    assert not device.reusable(plan, "0" * 64, ORIN, 8)


def test_trtexec_build_writes_the_package_sidecar(device, bundle_copy, tmp_path, monkeypatch):
    """The device's trtexec path end to end, with a stand-in trtexec (no TensorRT here) that records its
    arguments and writes the engine file it is asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trtexec = bin_dir / "trtexec"
    trtexec.write_text("#!/bin/sh\n[ \"$1\" = --help ] && { echo '  --stronglyTyped  strongly typed'; exit 0; }\n"
                       f"echo \"$@\" > {tmp_path / 'args'}\n"
                       "for a; do case $a in --saveEngine=*) printf plan > \"${a#--saveEngine=}\";; esac; done\n")
    trtexec.chmod(trtexec.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/bin")  # no `edgetl` on PATH: the trtexec path
    monkeypatch.setattr(device, "engine_facts", lambda: dict(ORIN))
    done = device.build(device.Build(str(bundle_copy), "fp32", 4))
    assert done["builder"] == "trtexec" and not done["reused"]
    args = (tmp_path / "args").read_text().split()
    assert "--minShapes=images:1x3x32x32" in args and "--maxShapes=images:4x3x32x32" in args
    assert "--stronglyTyped" in args
    plan = Path(done["engine"])
    assert plan == bundle_copy / "engines" / "orin-trt10.3.0" / "model.fp32.plan" and plan.read_bytes() == b"plan"
    sidecar = engine.read_sidecar(plan)
    assert sidecar["compute_capability"] == "8.7" and sidecar["trtexec"] == str(trtexec)
    engine.check_engine(plan, sidecar, ORIN, sha256_file(plan))
    assert device.build(device.Build(str(bundle_copy), "fp32", 4))["reused"]  # unchanged ONNX, TensorRT and GPU: no rebuild


def test_device_row_and_edgetl_bench_row_agree(device, run_and_bundle, bundle_copy, monkeypatch):
    """Same model, same images, same timings -> the same row, key for key (only `where` differs).

    The clock is made deterministic: it advances only inside InferenceSession.run, by 0.5 ms per image +
    0.25 ms, so every timed call of batch b takes exactly 0.5 b + 0.25 ms on both sides."""
    import onnxruntime as ort

    from edgetl.bench import BenchSettings, bench

    run, _ = run_and_bundle
    clock = {"t": 1000.0}
    original = ort.InferenceSession.run

    def timed_run(self, output_names, feed, *args, **kwargs):
        out = original(self, output_names, feed, *args, **kwargs)
        clock["t"] += 0.5e-3 * len(next(iter(feed.values()))) + 0.25e-3
        return out

    monkeypatch.setattr(ort.InferenceSession, "run", timed_run)
    monkeypatch.setattr(time, "perf_counter", lambda: clock["t"])
    local = bench(run, BenchSettings(backends="onnxruntime", precisions="fp32", batch_sizes=[1, 4], warmup=1,
                                     iterations=5, device="cpu"), write=False).rows
    there = device.bench(device.Bench(str(bundle_copy), "onnxruntime", "fp32", "cpu", (1, 4), 1, 5))["rows"]
    assert [tuple(r) for r in local] == [tuple(r) for r in there] == [ROW_KEYS, ROW_KEYS]
    for a, b, bs in zip(local, there, (1, 4)):
        assert a["where"] == "local" and b["where"] == "device"
        assert {k: v for k, v in a.items() if k != "where"} == {k: v for k, v in b.items() if k != "where"}
        ms = 0.5 * bs + 0.25
        assert a["latency_ms"] == {"mean": ms, "p50": ms, "p90": ms, "p99": ms, "min": ms, "max": ms, "std": 0.0}
        assert a["throughput_ips"] == round(bs / (ms / 1e3), 2) and a["iterations"] == 5
        assert a["speedup"] == 1.0 and a["flags"] == [] and 0.3 < a["top1"] <= 1.0


@pytest.mark.gpu
def test_device_cuda_facts_match_the_package(device):
    """The device script and the package ask the same CUDA layer (portable/cuda.py, shipped in the bundle)."""
    from edgetl.tensorrt.engine import machine_facts
    from edgetl.errors import BackendUnavailable

    try:
        package = machine_facts("tensorrt_rtx")
        here = device.cuda_facts()
    except (BackendUnavailable, device.DeviceError) as e:
        pytest.skip(f"needs a CUDA GPU and TensorRT-RTX: {e}")
    assert here == {k: package[k] for k in ("gpu_name", "compute_capability", "cuda_driver")}
