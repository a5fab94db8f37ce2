#!/usr/bin/env python3
"""edgetl's device-side entry point: runs inside an edgetl bundle on the target (a Jetson).

It needs the Python standard library and numpy, plus TensorRT's Python API (JetPack) or onnxruntime for the
backend it runs; no edgetl install. What both sides must agree on (the manifest check, engine names and the
sidecar, latency statistics and the bench row, Jetson facts) is edgetl's own `portable/` package, shipped
next to this file; this file only orchestrates on the device. CUDA is reached through portable/cuda.py (ctypes
on JetPack's libcudart); the bundle carries its images already preprocessed (data/inputs.npy), so nothing is
decoded here.

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

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # never write __pycache__ into a verified bundle

try:  # next to this file in a bundle (or provided by the program `edgetl deploy` sends on stdin)
    from portable import cuda, engines, jetson, manifest as bundle_manifest
    from portable.hashing import sha256_file
except ImportError as _e:
    sys.stderr.write(f"edgetl-device: error: cannot import edgetl's portable/ package ({_e}): run this file from "
                     "an edgetl bundle, where portable/ sits next to it\n")
    sys.exit(2)

HERE = Path(__file__).resolve().parent if "__file__" in globals() and __file__ not in ("-", "<stdin>") else Path.cwd()
MIN_PYTHON = (3, 8)
NUMPY_HINT = ("numpy is not installed for this Python ({python}): `{python} -m pip install numpy` on the device, "
              "or use a Python that has it (edgetl deploy --python PATH)")


class DeviceError(Exception):
    """A failure the user can act on; main() prints it as one line."""


def require_numpy():
    try:
        import numpy as np
    except ImportError:
        raise DeviceError(NUMPY_HINT.format(python=sys.executable or "python3")) from None
    return np


# -- files and the manifest ---------------------------------------------------------------------------

def load_manifest(bundle: Path) -> dict:
    try:
        return bundle_manifest.load_manifest(bundle)
    except bundle_manifest.ManifestError as e:
        raise DeviceError(str(e)) from None


def verify(bundle: Path) -> dict:
    """Every file of the manifest is present with its size and SHA-256; raise on the first mismatch."""
    try:
        manifest = bundle_manifest.verify(bundle)
    except bundle_manifest.ManifestError as e:
        raise DeviceError(str(e)) from None
    return {"ok": True, "bundle": str(bundle), "files": len(manifest["files"]),
            "bundle_sha256": sha256_file(bundle / bundle_manifest.MANIFEST),
            "unlisted": bundle_manifest.unlisted(bundle, manifest)}


def model_file(manifest: dict, precision: str, target: str = "tensorrt") -> str:
    try:
        return bundle_manifest.model_file(manifest, precision, target)
    except bundle_manifest.ManifestError as e:
        raise DeviceError(str(e)) from None


def inventory(dirs: list) -> dict:
    """{dir: {"exists": bool, "files": {relpath: {size, sha256}}}}; symlinks are not followed."""
    out = {}
    for d in dirs:
        root = Path(d)
        files = {}
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if p.is_file() and not p.is_symlink():
                        files[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        out[d] = {"exists": root.is_dir(), "files": files}
    return out


# -- device facts -------------------------------------------------------------------------------------

def _run(argv: list, timeout: float = 20.0):
    """stdout of a command, or None if it is missing or fails (facts are optional)."""
    if shutil.which(argv[0]) is None and not os.path.isfile(argv[0]):
        return None
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def tensorrt_version():
    """TensorRT's version from its Python API, else from the installed package (trtexec-only setups)."""
    try:
        import tensorrt as trt  # JetPack's python3-libnvinfer

        return str(trt.__version__)
    except Exception:
        pass
    for pkg in ("tensorrt", "libnvinfer10", "libnvinfer8"):
        v = _run(["dpkg-query", "-W", "-f=${Version}", pkg])
        if v:
            return v.split("+")[0].split("-")[0]
    return None


def _module_version(name: str):
    try:
        module = __import__(name)
        return str(getattr(module, "__version__", "unknown"))
    except Exception:
        return None


def free_bytes(path: str):
    """Free bytes on the file system that holds `path` (its nearest existing ancestor), or None."""
    p = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def facts(space=None) -> dict:
    """What this device is and can run. Never needs numpy, so it can say that numpy is missing."""
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    gpu, no_gpu = {"gpu_name": None, "compute_capability": None, "cuda_driver": None}, cuda.why_no_gpu()
    if no_gpu is None:
        try:
            gpu = cuda_facts()
        except DeviceError as e:  # facts are answers: a GPU that fails its queries is reported, not raised
            no_gpu = str(e)
    return {
        "hostname": platform.node() or None,
        "user": _user(),
        "model": jetson.board_model(),
        "machine": platform.machine() or None,
        "os": _os_name(),
        "l4t": jetson.l4t_release(),
        "jetpack": jetpack.split("+")[0].split("-")[0] if jetpack else None,
        "tensorrt": tensorrt_version(),
        "tensorrt_python": _module_version("tensorrt"),
        "gpu": gpu["gpu_name"],
        "compute_capability": gpu["compute_capability"],
        "cuda_driver": gpu["cuda_driver"],
        "no_gpu_reason": no_gpu,
        "power_mode": jetson.power_mode(),
        "clocks": jetson.clocks(),
        "python": platform.python_version(),
        "python_executable": sys.executable or None,
        "numpy": _module_version("numpy"),
        "onnxruntime": _module_version("onnxruntime"),
        "onnxruntime_providers": _ort_providers(),
        "edgetl": _module_version("edgetl"),
        "trtexec": find_trtexec(),
        "free_bytes": None if space is None else free_bytes(space),
    }


def _user():
    """The login name, so results of two accounts on one device are kept apart (RUN/devices/<user@host>/)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no $USER: the name is optional
        return None


def _os_name():
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def _ort_providers():
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except Exception:
        return None


# -- CUDA (the package's own ctypes layer, portable/cuda.py) -------------------------------------------------

def cuda_facts() -> dict:
    """CUDA's own GPU name, compute capability and driver version of device 0 (portable.cuda.gpu_facts)."""
    try:
        return cuda.gpu_facts()
    except cuda.CudaUnavailable as e:
        raise DeviceError(str(e)) from None


def engine_facts() -> dict:
    """The facts an engine built here is tied to, in the package's terms (edgetl.tensorrt.engine.machine_facts)."""
    version = tensorrt_version()
    if version is None:
        raise DeviceError("TensorRT is not installed on this device (no python3-libnvinfer / tensorrt package); "
                          "benchmark the ONNX model instead with --backend onnxruntime")
    return {"library": "tensorrt", "library_version": version, **cuda_facts(), "l4t_release": jetson.l4t_release()}


# -- engine build -------------------------------------------------------------------------------------

def find_trtexec():
    return shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.isfile(p)), None)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reusable(plan: Path, onnx_sha: str, machine: dict, max_batch: int) -> bool:
    """An engine is reused only when its sidecar says it was built from this ONNX, the package's mismatch
    rule accepts it on this machine, its profile covers the batch sizes asked for and its bytes are the
    ones the sidecar recorded."""
    sidecar = _read_json(Path(engines.sidecar_for(str(plan))))
    if not plan.is_file() or not isinstance(sidecar, dict) or sidecar.get("format") != engines.SIDECAR_FORMAT:
        return False
    profile_max = (sidecar.get("profile") or {}).get("max") or [0]
    return (sidecar.get("source_onnx_sha256") == onnx_sha and engines.engine_mismatch(sidecar, machine) is None
            and int(profile_max[0] or 0) >= max_batch and sidecar.get("engine_sha256") == sha256_file(plan))


def find_sibling_engine(bundle: Path, folder: str, precision: str, onnx_sha: str, machine: dict, max_batch: int):
    """(plan, sidecar) of an engine another bundle of this run built from the same ONNX for this machine.

    A new bundle (another --max-images, another edgetl version) with an unchanged model needs no new
    engine: building one takes minutes on a Jetson."""
    for other in sorted(bundle.parent.iterdir()):
        if other == bundle or not other.is_dir() or other.name.startswith("."):
            continue
        plan = other / "engines" / folder / engines.plan_name(precision)
        if reusable(plan, onnx_sha, machine, max_batch):
            return plan, Path(engines.sidecar_for(str(plan)))
    return None


def adopt_engine(source, plan: Path, sidecar: Path) -> None:
    """Copy another bundle's engine and sidecar here, each via a temporary name, the sidecar last."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(source, (plan, sidecar)):
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def engine_paths(bundle: Path, machine: dict, precision: str):
    """BUNDLE/engines/<cuda gpu name>-trt<version>/model.<p>.plan and its sidecar: the package's names."""
    folder = bundle / "engines" / engines.engine_dir_name(machine["gpu_name"], "tensorrt", machine["library_version"])
    plan = folder / engines.plan_name(precision)
    return plan, Path(engines.sidecar_for(str(plan)))


def profile_for(io: dict, max_batch: int) -> dict:
    """The optimisation profile: batch 1..max_batch, or N..N for a static-batch graph (export --static-batch N)."""
    first, *chw = io["input"]["shape"]
    fixed = None if io["input"].get("dynamic_batch", True) else int(first)
    lo, hi = (fixed, fixed) if fixed else (1, max_batch)
    return {"input": io["input"]["name"], "min": [lo, *chw], "opt": [hi, *chw], "max": [hi, *chw]}


def write_sidecar(plan: Path, manifest: dict, precision: str, machine: dict, *, builder: str, profile: dict,
                  build_seconds, trtexec=None, own=None) -> dict:
    """The engine's sidecar, through the package's own `make_sidecar` (format edgetl-engine/2), so that
    `edgetl bench` and `edgetl triton` load a device-built engine as their own. `own`: the sidecar
    `edgetl build` wrote, whose build settings are kept."""
    rel = model_file(manifest, precision)
    own = own if isinstance(own, dict) else {}
    kept = {k: own[k] for k in ("workspace_mib", "builder_optimization_level", "version_compatible", "dla_core")
            if own.get(k) is not None}
    sidecar = engines.make_sidecar(
        library="tensorrt", library_version=machine["library_version"], gpu_name=machine["gpu_name"],
        compute_capability=machine["compute_capability"], precision=precision, profile=profile, source_onnx=rel,
        source_onnx_sha256=manifest["files"][rel]["sha256"], engine_sha256=sha256_file(plan), builder=builder,
        edgetl_version=str(manifest.get("edgetl_version")), card=manifest.get("card"),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=build_seconds, cuda_driver=machine.get("cuda_driver"), l4t_release=machine.get("l4t_release"),
        trtexec=trtexec, **kept)
    _write_json(Path(engines.sidecar_for(str(plan))), sidecar)
    return sidecar


def build(bundle: Path, precision: str, max_batch: int, force: bool = False) -> dict:
    """Build (or reuse) BUNDLE/engines/<gpu>-trt<ver>/model.<precision>.plan with its sidecar."""
    manifest = verify_and_load(bundle)
    rel = model_file(manifest, precision)
    onnx_sha = manifest["files"][rel]["sha256"]
    machine = engine_facts()
    profile = profile_for(manifest["io"], max_batch)
    hi = profile["max"][0]
    plan, sidecar = engine_paths(bundle, machine, precision)
    done = {"engine": str(plan), "sidecar": str(sidecar), "reused": True}
    if not force and reusable(plan, onnx_sha, machine, hi):
        return {**done, "builder": _read_json(sidecar)["builder"]}
    if not force:
        source = find_sibling_engine(bundle, plan.parent.name, precision, onnx_sha, machine, hi)
        if source is not None:
            adopt_engine(source, plan, sidecar)
            return {**done, "reused_from": str(source[0]), "builder": _read_json(sidecar)["builder"]}
    plan.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    own, trtexec = None, None
    with tempfile.TemporaryDirectory(dir=plan.parent, prefix=".build-") as tmp:
        tmp_plan = Path(tmp) / plan.name
        if shutil.which("edgetl") and _run(["edgetl", "build", "--help"], timeout=60) is not None:
            builder = "edgetl build"
            lo = profile["min"][0]
            _check_call(["edgetl", "build", str(bundle), "--precision", precision, "--batch", f"{lo},{hi},{hi}"],
                        "edgetl build")
            built = sorted((bundle / "engines").glob(f"*/{engines.plan_name(precision)}"),
                           key=lambda p: p.stat().st_mtime)
            if not built:
                raise DeviceError(f"`edgetl build` finished but wrote no engines/*/{engines.plan_name(precision)}")
            shutil.copyfile(built[-1], tmp_plan)
            own = _read_json(Path(engines.sidecar_for(str(built[-1]))))
        else:
            trtexec = find_trtexec()
            if trtexec is None:
                raise DeviceError("neither edgetl nor trtexec is installed on this device: cannot build an engine "
                                  "(sudo apt install tensorrt, or benchmark with --backend onnxruntime)")
            builder = "trtexec"
            dynamic = bool(manifest["io"]["input"].get("dynamic_batch", True))
            _check_call(trtexec_command(trtexec, bundle / rel, tmp_plan, profile, precision, dynamic), "trtexec")
        if not tmp_plan.is_file() or tmp_plan.stat().st_size == 0:
            raise DeviceError(f"{builder} wrote no engine")
        os.replace(tmp_plan, plan)
    write_sidecar(plan, manifest, precision, machine, builder=builder, profile=profile,
                  build_seconds=time.time() - started, trtexec=trtexec, own=own)
    return {"engine": str(plan), "sidecar": str(sidecar), "reused": False, "builder": builder}


def trtexec_command(trtexec: str, onnx_path: Path, out: Path, profile: dict, precision: str, dynamic: bool) -> list:
    name = profile["input"]
    shape = lambda dims: f"{name}:" + "x".join(str(d) for d in dims)  # noqa: E731
    command = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={out}", "--skipInference"]
    if dynamic:  # a static-batch graph takes no shapes
        command += [f"--minShapes={shape(profile['min'])}", f"--optShapes={shape(profile['opt'])}",
                    f"--maxShapes={shape(profile['max'])}"]
    help_text = subprocess.run([trtexec, "--help"], capture_output=True, text=True).stdout
    if "--noTF32" in help_text:
        command.append("--noTF32")  # an fp32 engine computes in fp32, as `edgetl build` builds it
    if "--stronglyTyped" in help_text:
        command.append("--stronglyTyped")  # precision is baked into the ONNX graph
    elif precision in ("int8", "fp16"):
        command += ["--int8", "--fp16"] if precision == "int8" else ["--fp16"]  # TensorRT 8.6: weak typing
    return command


def load_data(bundle: Path, manifest: dict):
    """The bundle's preprocessed images and labels, refused in one line unless they are plain arrays of the
    model's input shape (never unpickled: a .npy with objects is code)."""
    np = require_numpy()
    arrays = []
    for key in ("inputs", "labels"):
        rel = manifest["data"][key]
        try:
            arrays.append(np.load(bundle_manifest.inside(bundle, rel), allow_pickle=False))
        except (OSError, ValueError) as e:  # ValueError: pickled objects, or not a .npy at all
            raise DeviceError(f"{rel}: not a plain numpy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    x, y = arrays
    want = tuple(manifest["io"]["input"]["shape"][1:])
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not len(y) or (
            all(isinstance(d, int) for d in want) and tuple(x.shape[1:]) != want):
        raise DeviceError(f"{manifest['data']['inputs']}: images of shape {x.shape} with {y.shape} labels, the model "
                          f"takes (N, {', '.join(map(str, want))}) with one label each")
    return x, y


def verify_and_load(bundle: Path) -> dict:
    verify(bundle)
    return load_manifest(bundle)


def _check_call(command: list, what: str) -> None:
    res = subprocess.run(command, capture_output=True, text=True)
    if res.returncode != 0:
        tail = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()][-3:]
        raise DeviceError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- runners ------------------------------------------------------------------------------------------

class OrtRunner:
    def __init__(self, path: Path, device: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise DeviceError("onnxruntime is not installed on this device (pip install onnxruntime)") from None
        available = ort.get_available_providers()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if providers[0] not in available:
            raise DeviceError(f"onnxruntime here has no {providers[0]} (it has {', '.join(available)})")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime's own exception types: a file that is not an ONNX model it can run
            raise DeviceError(f"{path.name}: onnxruntime cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.input_name = self.session.get_inputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) else None
        self.device = device
        self.provider = self.session.get_providers()[0]

    def __call__(self, x):
        return self.session.run(None, {self.input_name: x})[0]

    def close(self):
        del self.session


class TrtRunner:
    """A TensorRT 10 engine: copy in, enqueue, copy out, synchronize (what one call of __call__ times)."""

    def __init__(self, plan: Path, max_batch: int):
        np = require_numpy()
        try:
            import tensorrt as trt
        except ImportError:
            raise DeviceError("TensorRT's Python API is not installed (sudo apt install python3-libnvinfer)") from None
        self.np, self.trt = np, trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise DeviceError(f"{plan}: TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        shape = tuple(self.engine.get_tensor_shape(self.input))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.max_batch = self.fixed_batch or max_batch
        self.sample = shape[1:]
        self.context.set_input_shape(self.input, (self.max_batch, *self.sample))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        try:
            self.stream = cuda.Stream()
            self.d_in = cuda.DeviceBuffer(self.max_batch * int(np.prod(self.sample)) * self.in_dtype.itemsize)
            self.d_out = cuda.DeviceBuffer(int(np.prod(out_shape)) * self.out_dtype.itemsize)
        except (cuda.CudaError, cuda.CudaUnavailable) as e:
            raise DeviceError(str(e)) from None
        self.context.set_tensor_address(self.input, self.d_in.ptr)
        self.context.set_tensor_address(self.output, self.d_out.ptr)
        self.device = "cuda"

    def __call__(self, x):
        np = self.np
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self.context.set_input_shape(self.input, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype)
        try:
            self.stream.upload(self.d_in, x)
            if not self.context.execute_async_v3(self.stream.handle_int):
                raise DeviceError("TensorRT execute_async_v3 failed")
            self.stream.download(out, self.d_out)
            self.stream.synchronize()
        except cuda.CudaError as e:
            raise DeviceError(str(e)) from None
        return out

    def close(self):
        for res in (self.d_in, self.d_out):
            res.free()
        self.stream.destroy()


# -- benchmark ----------------------------------------------------------------------------------------

def bench(bundle: Path, backend: str, precision, batch_sizes: list, warmup: int, iterations: int,
          device: str = "auto", out=None) -> dict:
    """Accuracy on the bundle's preprocessed images and latency per batch size, as bench rows (portable.rows)."""
    np = require_numpy()
    from portable import rows as bench_rows

    manifest = verify_and_load(bundle)
    precision = precision or manifest["precision"]
    x, y = load_data(bundle, manifest)
    engine_info = None
    if backend == "tensorrt":
        engine_info = build(bundle, precision, max(batch_sizes))
        runner = TrtRunner(Path(engine_info["engine"]), max(batch_sizes))
        model_rel = Path(engine_info["engine"]).relative_to(bundle).as_posix()
        timed = "host->device copy + compute + device->host copy"
    elif backend == "onnxruntime":
        cpu = device == "cpu" or (device == "auto" and "CUDAExecutionProvider" not in (_ort_providers() or []))
        model_rel = model_file(manifest, precision, "cpu" if cpu else "tensorrt")
        runner = OrtRunner(bundle / model_rel, "cpu" if cpu else "cuda")
        timed = bench_rows.ort_timed(cpu)
    else:
        raise DeviceError(f"unknown backend {backend!r} (use tensorrt or onnxruntime)")
    reference = manifest.get("reference") or {}
    try:
        fixed = runner.fixed_batch
        sizes = [fixed] if fixed else sorted(set(int(b) for b in batch_sizes))
        correct, step = 0, sizes[-1]
        for start in range(0, len(x), step):
            xb, n = bench_rows.pad_batch(x[start:start + step], step if fixed else len(x[start:start + step]))
            logits = np.asarray(runner(xb))[:n]
            correct += int((logits.argmax(axis=1) == y[start:start + n]).sum())
        top1 = correct / len(y)
        rows = []
        for b in sizes:
            xb = bench_rows.batch_of(x, b)
            for _ in range(warmup):
                runner(xb)
            seconds = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                runner(xb)  # returns host data: every call is synchronised
                seconds.append(time.perf_counter() - t0)
            rows.append(bench_rows.make_row(
                backend=backend, precision=precision, batch_size=b, device=runner.device, model_file=model_rel,
                seconds=seconds, warmup=warmup, timed=timed, top1=top1, n_images=len(y), where="device",
                provider=getattr(runner, "provider", None)))
    finally:
        runner.close()
    bench_rows.compare_rows(rows, reference)
    doc = {"rows": rows, "system": facts(), "reference": reference,
           "bundle": {"run": manifest.get("run"), "bundle_sha256": sha256_file(bundle / bundle_manifest.MANIFEST),
                      "edgetl_version": manifest.get("edgetl_version")},
           "engine": engine_info}
    if out:
        out = Path(out) if os.path.isabs(str(out)) else bundle / out
        _write_json(out, doc)
        doc["written"] = str(out)
    return doc


# -- command line -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgetl_device.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every bundle file's size and SHA-256")
    p.add_argument("--dir", default=str(HERE))
    p = sub.add_parser("facts", help="device model, JetPack/L4T, TensorRT, numpy, power mode, clocks")
    p.add_argument("--space", default=None, help="also report the free bytes where this path is (or would be)")
    p = sub.add_parser("inventory", help="size and SHA-256 of every file under each DIR")
    p.add_argument("dirs", nargs="+")
    p = sub.add_parser("build", help="build the TensorRT engine here (reused when unchanged)")
    p.add_argument("--dir", default=str(HERE))
    p.add_argument("--precision", default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("bench", help="accuracy and latency on the bundle's images")
    p.add_argument("--dir", default=str(HERE))
    p.add_argument("--backend", default="tensorrt", choices=["tensorrt", "onnxruntime"])
    p.add_argument("--precision", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="onnxruntime only")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--out", default=None, help="write bench.json here (relative paths: inside the bundle)")
    args = parser.parse_args(argv)
    try:
        if sys.version_info < MIN_PYTHON:
            raise DeviceError(f"Python {platform.python_version()} is too old: edgetl's device side needs "
                              f"{'.'.join(map(str, MIN_PYTHON))} or newer (edgetl deploy --python PATH)")
        if args.command == "verify":
            result = verify(Path(args.dir))
        elif args.command == "facts":
            result = facts(args.space)
        elif args.command == "inventory":
            result = inventory(args.dirs)
        elif args.command == "build":
            bundle = Path(args.dir)
            result = build(bundle, args.precision or load_manifest(bundle)["precision"], args.max_batch, args.force)
        else:
            try:
                sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
            except ValueError:
                raise DeviceError(f"--batch-sizes {args.batch_sizes!r}: give integers, e.g. 1,8") from None
            if not sizes or min(sizes) < 1 or args.iterations < 1 or args.warmup < 0:
                raise DeviceError("--batch-sizes must be >= 1, --iterations >= 1, --warmup >= 0")
            result = bench(Path(args.dir), args.backend, args.precision, sizes, args.warmup, args.iterations,
                           args.device, args.out)
    except DeviceError as e:
        print(f"edgetl-device: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the promise to `edgetl deploy`: one parsable line and exit 2, whatever broke
        if os.environ.get("EDGETL_DEBUG"):
            raise
        text = str(e).strip().splitlines()
        print(f"edgetl-device: error: unexpected {type(e).__name__} in `{args.command}`: "
              f"{text[0] if text else 'no message'} (EDGETL_DEBUG=1 shows where)", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
