#!/usr/bin/env python3
"""edgetl's device-side entry point: runs inside an edgetl bundle on the target (a Jetson).

It needs the Python standard library and numpy, plus TensorRT's Python API (JetPack) or onnxruntime for the
backend it runs; no edgetl install. Everything that produces a number or a file both sides read (the
manifest check, graph forms, engine names and the sidecar, the runners, the timing and top-1 loops, the
trtexec line, the bench row, the requests and replies) is edgetl's own `portable/` package, shipped next to
this file, which only orchestrates. Its images come preprocessed (data/inputs.npy): nothing is decoded here.

    python3 edgetl_device.py verify   [--dir BUNDLE]                check every file against manifest.json
    python3 edgetl_device.py facts    [--space PATH]                device model, L4T, TensorRT, numpy, power mode, clocks
    python3 edgetl_device.py build    [--dir BUNDLE] [--precision P]  TensorRT engine (reused when unchanged)
    python3 edgetl_device.py bench    [--dir BUNDLE] [--backend tensorrt|onnxruntime] [--batch-sizes 1,8]
    python3 edgetl_device.py inventory DIR...                       size + sha256 of the files under DIR (for resume)

Every command prints one JSON document on stdout; a failure prints one line `edgetl-device: error: ...`
on stderr and exits 2. `edgetl deploy` drives these commands over ssh; on an offline device, unpack the
bundle tarball and run them by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # never write __pycache__ into a verified bundle

try:  # next to this file in a bundle (or provided by the program `edgetl deploy` sends on stdin)
    from portable import builders, cuda, forms, jetson, manifest as bundle_manifest
    from portable.facts import facts, find_trtexec, ort_providers, run_quiet, tensorrt_version
    from portable.hashing import inventory, sha256_file
    from portable.protocol import Bench, Build, BuildReply, Facts, Inventory, RequestError, Verify, VerifyReply, parse
    from portable.store import (adopt_engine, engine_paths, find_sibling_engine, load_data, profile_for, read_json,
                                reusable, write_json, write_sidecar)
    from portable.trtexec import tensorrt_unsupported
except ImportError as _e:
    sys.stderr.write(f"edgetl-device: error: cannot import edgetl's portable/ package ({_e}): run this file from "
                     "an edgetl bundle, where portable/ sits next to it\n")
    sys.exit(2)

HERE = Path(__file__).resolve().parent if "__file__" in globals() and __file__ not in ("-", "<stdin>") else Path.cwd()
MIN_PYTHON = (3, 8)
NUMPY_HINT = ("numpy is not installed for this Python ({python}): `{python} -m pip install numpy` on the device, "
              "or use a Python that has it (edgetl deploy --python PATH)")
TRT_TIMED = "host->device copy + compute + device->host copy"
NO_ORT = "onnxruntime is not installed on this device (pip install onnxruntime)"


class DeviceError(Exception):
    """A failure the user can act on; main() prints it as one line."""


def require_numpy():
    try:
        import numpy as np
    except ImportError:
        raise DeviceError(NUMPY_HINT.format(python=sys.executable or "python3")) from None
    return np


def _call(fn, *args):
    """A portable/ answer, its one-line refusals (a bad bundle, a failed builder) as a DeviceError."""
    try:
        return fn(*args)
    except (bundle_manifest.ManifestError, builders.BuildError) as e:
        raise DeviceError(str(e)) from None


def check_form(path: Path, precision: str, target=None) -> None:
    """Refuse a graph whose own metadata says it is not what it is about to be built or run as."""
    reason = forms.graph_mismatch(path, precision, target)
    if reason:
        raise DeviceError(f"{path.name}: {reason}; re-bundle the run (edgetl bundle)")


def load_manifest(bundle: Path) -> dict:
    return _call(bundle_manifest.load_manifest, bundle)


def model_file(manifest: dict, precision: str, device: str = "cuda") -> str:
    return _call(bundle_manifest.model_file, manifest, precision, device)


def verify(bundle: Path) -> dict:
    """Every file of the manifest is present with its size and SHA-256; raise on the first mismatch."""
    manifest = _call(bundle_manifest.verify, bundle)
    return VerifyReply(ok=True, bundle=str(bundle), files=len(manifest["files"]),
                       bundle_sha256=sha256_file(bundle / bundle_manifest.MANIFEST),
                       unlisted=bundle_manifest.unlisted(bundle, manifest)).to_dict()


def verify_and_load(bundle: Path) -> dict:
    verify(bundle)
    return load_manifest(bundle)


def cuda_facts() -> dict:
    """CUDA's own GPU name, compute capability and driver version of device 0 (portable.cuda.gpu_facts)."""
    try:
        return cuda.gpu_facts()
    except (cuda.CudaUnavailable, cuda.CudaError) as e:
        raise DeviceError(str(e)) from None


def engine_facts() -> dict:
    """The facts an engine built here is tied to, in the package's terms (edgetl.tensorrt.engine.machine_facts)."""
    version = tensorrt_version()
    if version is None:
        raise DeviceError("TensorRT is not installed on this device (no python3-libnvinfer / tensorrt package); "
                          "benchmark the ONNX model instead with --backend onnxruntime")
    return {"library": "tensorrt", "library_version": version, **cuda_facts(), "l4t_release": jetson.l4t_release()}


# -- engine build: plan, then act ----------------------------------------------------------------------

def plan_build(force: bool, here_serves: bool, sibling) -> str:
    """'reuse' the engine here, 'adopt' another bundle's (`sibling`), or 'build' one."""
    if force:
        return "build"
    return "reuse" if here_serves else ("adopt" if sibling is not None else "build")


def choose_builder(edgetl_here: bool, trtexec, version: str) -> str:
    """'edgetl build' where edgetl is installed, else 'trtexec' for a TensorRT in edgetl's supported range."""
    if edgetl_here:
        return "edgetl build"
    if trtexec is None:
        raise DeviceError("neither edgetl nor trtexec is installed on this device: cannot build an engine "
                          "(sudo apt install tensorrt, or benchmark with --backend onnxruntime)")
    too_old = tensorrt_unsupported(version)
    if too_old:
        raise DeviceError(f"{too_old}; upgrade JetPack, or benchmark with --backend onnxruntime")
    return "trtexec"


def build(request: Build) -> dict:
    """Build (or reuse) BUNDLE/engines/<gpu>-trt<ver>/model.<precision>.plan with its sidecar."""
    bundle = Path(request.dir)
    manifest = verify_and_load(bundle)
    precision = request.precision or manifest["precision"]
    rel = model_file(manifest, precision)
    check_form(bundle / rel, precision, "tensorrt")
    machine = engine_facts()
    profile = profile_for(manifest["io"], request.max_batch)
    plan, sidecar = engine_paths(bundle, machine, precision)
    onnx_sha, hi = manifest["files"][rel]["sha256"], profile["max"][0]
    here = not request.force and reusable(plan, onnx_sha, machine, hi)
    sibling = None if request.force or here else find_sibling_engine(bundle, plan.parent.name, precision, onnx_sha,
                                                                     machine, hi)
    step = plan_build(request.force, here, sibling)
    if step != "build":
        if step == "adopt":
            adopt_engine(sibling, plan, sidecar)
        return BuildReply(str(plan), str(sidecar), True, read_json(sidecar)["builder"],
                          str(sibling[0]) if step == "adopt" else None).to_dict()
    edgetl_here = bool(shutil.which("edgetl")) and run_quiet(["edgetl", "build", "--help"], timeout=60) is not None
    trtexec = None if edgetl_here else find_trtexec()
    builder = choose_builder(edgetl_here, trtexec, machine["library_version"])
    plan.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(dir=plan.parent, prefix=".build-") as tmp:
        tmp_plan = Path(tmp) / plan.name
        own = (_call(builders.with_edgetl, bundle, precision, profile, tmp_plan) if builder == "edgetl build" else
               _call(builders.with_trtexec, trtexec, bundle / rel, manifest["io"], profile,
                     machine["library_version"], tmp_plan))
        if not tmp_plan.is_file() or tmp_plan.stat().st_size == 0:
            raise DeviceError(f"{builder} wrote no engine")
        os.replace(tmp_plan, plan)
    write_sidecar(plan, manifest, precision, machine, builder=builder, profile=profile,
                  build_seconds=time.time() - started, trtexec=trtexec, own=own)
    return BuildReply(str(plan), str(sidecar), False, builder).to_dict()


# -- benchmark: plan, then act -------------------------------------------------------------------------

def plan_ort(manifest: dict, precision: str, device: str, providers) -> tuple:
    """(the bundle file onnxruntime loads, the device it runs on): the CPU form of the graph on the CPU."""
    from portable.runners import ort_device

    if providers is None:
        raise DeviceError(NO_ORT)
    where = ort_device(device, providers)
    return model_file(manifest, precision, where), where


def open_runner(bundle: Path, request: Bench, manifest: dict, precision: str):
    """(runner, model file relative to the bundle, what a timed call includes, the build reply or None)."""
    from portable import runners
    from portable.rows import ort_timed

    engine = None
    if request.backend == "tensorrt":
        engine = build(Build(str(bundle), precision, max(request.batch_sizes)))
        rel, where, timed = Path(engine["engine"]).relative_to(bundle).as_posix(), "cuda", TRT_TIMED
    else:
        rel, where = plan_ort(manifest, precision, request.device, ort_providers())
        check_form(bundle / rel, precision)
        timed = ort_timed(where == "cpu")
    try:
        if engine is not None:
            runner = runners.TrtRunner((bundle / rel).read_bytes())
        else:
            runner = runners.OrtRunner(str(bundle / rel), where)
    except runners.RunnerError as e:
        raise DeviceError(NO_ORT if e.kind == "missing" and engine is None else f"{Path(rel).name}: {e}") from None
    except (cuda.CudaError, cuda.CudaUnavailable) as e:
        raise DeviceError(str(e)) from None
    runner.device = where
    return runner, rel, timed, engine


def measure_rows(runner, request: Bench, precision: str, model_rel: str, timed: str, x, y) -> list:
    """Top-1 over every image, then the timed calls per batch size, as bench rows (portable.rows)."""
    from portable import measure, rows

    fixed = runner.fixed_batch
    sizes = [fixed] if fixed else sorted(set(request.batch_sizes))
    top1 = measure.top1(runner, x, y, sizes[-1], fixed)
    out = []
    for b in sizes:
        xb = rows.batch_of(x, b)
        seconds = measure.time_calls(lambda: runner(xb), request.warmup, request.iterations)  # host data: synchronised
        out.append(rows.make_row(backend=request.backend, precision=precision, batch_size=b, device=runner.device,
                                 model_file=model_rel, seconds=seconds, warmup=request.warmup, timed=timed,
                                 top1=top1, n_images=len(y), where="device",
                                 provider=getattr(runner, "provider", None)))
    return out


def bench(request: Bench) -> dict:
    """Accuracy on the bundle's preprocessed images and latency per batch size, as bench rows (portable.rows)."""
    require_numpy()
    from portable.protocol import BenchReply
    from portable.rows import compare_rows

    bundle = Path(request.dir)
    manifest = verify_and_load(bundle)
    precision = request.precision or manifest["precision"]
    x, y = _call(load_data, bundle, manifest)
    runner, model_rel, timed, engine = open_runner(bundle, request, manifest, precision)
    try:
        rows = measure_rows(runner, request, precision, model_rel, timed, x, y)
    except (cuda.CudaError, cuda.CudaUnavailable) as e:
        raise DeviceError(str(e)) from None
    finally:
        runner.close()
    reference = manifest.get("reference") or {}
    compare_rows(rows, reference)
    reply = BenchReply(rows=rows, system=facts(), reference=reference, engine=engine, bundle={
        "run": manifest.get("run"), "bundle_sha256": sha256_file(bundle / bundle_manifest.MANIFEST),
        "edgetl_version": manifest.get("edgetl_version")})
    if request.out:
        out = Path(request.out) if os.path.isabs(request.out) else bundle / request.out
        write_json(out, reply.to_dict())
        reply = dataclasses.replace(reply, written=str(out))
    return reply.to_dict()


# -- command line -------------------------------------------------------------------------------------

def run(request) -> dict:
    """The reply to one request."""
    handlers = {Verify: lambda r: verify(Path(r.dir)), Facts: lambda r: facts(r.space),
                Inventory: lambda r: inventory(list(r.dirs)), Build: build, Bench: lambda r: bench(r.check())}
    return handlers[type(request)](request)


def main(argv=None) -> int:
    command = "?"
    try:
        request = parse(argv, str(HERE), __doc__.split("\n\n")[0])
        command = request.argv()[0]
        if sys.version_info < MIN_PYTHON:
            raise DeviceError(f"Python {platform.python_version()} is too old: edgetl's device side needs "
                              f"{'.'.join(map(str, MIN_PYTHON))} or newer (edgetl deploy --python PATH)")
        result = run(request)
    except (DeviceError, RequestError) as e:
        print(f"edgetl-device: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the promise to `edgetl deploy`: one parsable line and exit 2, whatever broke
        if os.environ.get("EDGETL_DEBUG"):
            raise
        text = str(e).strip().splitlines()
        print(f"edgetl-device: error: unexpected {type(e).__name__} in `{command}`: "
              f"{text[0] if text else 'no message'} (EDGETL_DEBUG=1 shows where)", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
