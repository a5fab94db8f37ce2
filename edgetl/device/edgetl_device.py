#!/usr/bin/env python3
"""edgetl's device-side entry point: runs inside an edgetl bundle on the target (a Jetson).

It needs only the Python standard library and numpy, plus TensorRT's Python API (JetPack) or
onnxruntime for the backend it runs. It never imports edgetl: a Jetson with a bare JetPack image
can run it. Where edgetl is installed on the device, `build` delegates to `edgetl build`.

    python3 edgetl_device.py verify   [--dir BUNDLE]                check every file against manifest.json
    python3 edgetl_device.py facts                                   device model, L4T/JetPack, TensorRT, power mode, clocks
    python3 edgetl_device.py build    [--dir BUNDLE] [--precision P]  TensorRT engine (reused when unchanged)
    python3 edgetl_device.py bench    [--dir BUNDLE] [--backend tensorrt|onnxruntime] [--batch-sizes 1,8]
    python3 edgetl_device.py inventory DIR...                       size + sha256 of the files under DIR (for resume)

Every command prints one JSON document on stdout; a failure prints one line `edgetl-device: error: ...`
on stderr and exits 2. `edgetl deploy` drives these commands over ssh; on an offline device, unpack the
bundle tarball and run them by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUNDLE_FORMAT = "edgetl-bundle/1"
MANIFEST = "manifest.json"
HERE = Path(__file__).resolve().parent if "__file__" in globals() and __file__ not in ("-", "<stdin>") else Path.cwd()


class DeviceError(Exception):
    """A failure the user can act on; main() prints it as one line."""


# -- files and the manifest ---------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceError(f"{path}: no manifest (is {bundle} an edgetl bundle?)") from None
    except (OSError, ValueError) as e:
        raise DeviceError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise DeviceError(f"{path}: bundle format {manifest.get('format')!r}, this entry point reads {BUNDLE_FORMAT}")
    return manifest


def _inside(bundle: Path, rel: str) -> Path:
    # A manifest names files relative to the bundle; refuse anything that would point outside it.
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise DeviceError(f"manifest names a file outside the bundle: {rel!r}")
    return bundle / rel


def verify(bundle: Path) -> dict:
    """Every file of the manifest is present with its size and SHA-256; raise on the first mismatch."""
    manifest = load_manifest(bundle)
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = _inside(bundle, rel)
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} sha256 differs from the manifest (modified on the device?)")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DeviceError(f"bundle {bundle} failed verification: {problems[0]}{more}")
    return {"ok": True, "bundle": str(bundle), "files": len(manifest["files"]), "bundle_sha256": sha256_file(bundle / MANIFEST)}


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

def _read(path: str):
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00 \n")
    except OSError:
        return None


def _run(argv: list, timeout: float = 20.0):
    """stdout of a command, or None if it is missing or fails (facts are optional)."""
    if shutil.which(argv[0]) is None and not os.path.isfile(argv[0]):
        return None
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def l4t_release():
    """'36.3.0' from /etc/nv_tegra_release ('# R36 (release), REVISION: 3.0, ...')."""
    text = _read("/etc/nv_tegra_release")
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else text.splitlines()[0]


def tensorrt_version():
    try:
        import tensorrt as trt  # noqa: F401 - JetPack's python3-libnvinfer

        return trt.__version__
    except Exception:
        pass
    for pkg in ("tensorrt", "libnvinfer10", "libnvinfer8"):
        v = _run(["dpkg-query", "-W", "-f=${Version}", pkg])
        if v:
            return v.split("+")[0].split("-")[0]
    return None


def gpu_name():
    """The GPU's name: nvidia-smi where it answers, else the board name (Jetson iGPUs share it)."""
    name = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if name:
        return name.splitlines()[0].strip()
    model = _read("/proc/device-tree/model")
    return model or None


def power_mode():
    out = _run(["nvpmodel", "-q"])
    if not out:
        return None
    m = re.search(r"NV Power Mode:\s*(\S+)", out)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return {"name": m.group(1) if m else None, "id": int(lines[-1]) if lines and lines[-1].isdigit() else None}


def clocks():
    """Current clocks in MHz where the kernel lets us read them; absent ones are left out."""
    found = {}
    for path in sorted(Path("/sys/class/devfreq").glob("*")):
        name = path.name.lower()
        if "gpu" in name or name.endswith(".gpu") or name in ("17000000.ga10b", "17000000.gv11b", "57000000.gpu"):
            v = _read(str(path / "cur_freq"))
            if v and v.isdigit():
                found["gpu_mhz"] = round(int(v) / 1e6, 1)
                break
    v = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if v and v.isdigit():
        found["cpu0_mhz"] = round(int(v) / 1e3, 1)
    v = _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")  # root only
    if v and v.isdigit():
        found["emc_mhz"] = round(int(v) / 1e6, 1)
    return found or None


def _module_version(name: str):
    try:
        module = __import__(name)
        return getattr(module, "__version__", "unknown")
    except Exception:
        return None


def facts() -> dict:
    l4t = l4t_release()
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    return {
        "hostname": platform.node() or None,
        "model": _read("/proc/device-tree/model"),
        "machine": platform.machine() or None,
        "os": _os_name(),
        "l4t": l4t,
        "jetpack": jetpack.split("+")[0].split("-")[0] if jetpack else None,
        "tensorrt": tensorrt_version(),
        "gpu": gpu_name(),
        "power_mode": power_mode(),
        "clocks": clocks(),
        "python": platform.python_version(),
        "numpy": _module_version("numpy"),
        "onnxruntime": _module_version("onnxruntime"),
        "edgetl": _module_version("edgetl"),
        "trtexec": find_trtexec(),
    }


def _os_name():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None


# -- engine build -------------------------------------------------------------------------------------

def find_trtexec():
    return shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.isfile(p)), None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "gpu"


def model_file(manifest: dict, precision: str, target: str = "tensorrt") -> str:
    models = manifest["models"]
    if precision == "int8" and target == "cpu" and "int8_cpu" in models:
        return models["int8_cpu"]
    if precision not in models:
        raise DeviceError(f"this bundle has no {precision} model (it holds {', '.join(sorted(models))})")
    return models[precision]


def _reusable(sidecar: Path, plan: Path, onnx_sha: str, trt_version, gpu, max_batch: int) -> bool:
    """An engine is reused only when its ONNX, TensorRT version and GPU are the ones here now (and its
    optimisation profile covers the batch sizes asked for)."""
    if not (sidecar.is_file() and plan.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (meta.get("onnx_sha256") == onnx_sha and str(meta.get("tensorrt_version")) == str(trt_version)
            and meta.get("gpu") == gpu and int(meta.get("max_batch") or 0) >= max_batch
            and meta.get("engine_sha256") == sha256_file(plan))


def find_sibling_engine(bundle: Path, engine_dir_name: str, precision: str, onnx_sha: str, trt_version, gpu,
                        max_batch: int):
    """(plan, sidecar) of an engine another bundle of this run built from the same ONNX, TensorRT and GPU.

    A new bundle (another --max-images, another edgetl version) with an unchanged model needs no new
    engine: building one takes minutes on a Jetson."""
    for other in sorted(bundle.parent.iterdir()):
        if other == bundle or not other.is_dir() or other.name.startswith("."):
            continue
        engine_dir = other / "engines" / engine_dir_name
        plan, sidecar = engine_dir / f"model.{precision}.plan", engine_dir / f"model.{precision}.json"
        if _reusable(sidecar, plan, onnx_sha, trt_version, gpu, max_batch):
            return plan, sidecar
    return None


def adopt_engine(source, plan: Path, sidecar: Path) -> None:
    """Copy another bundle's engine and sidecar here, each via a temporary name, the sidecar last."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(source, (plan, sidecar)):
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def build(bundle: Path, precision: str, max_batch: int, force: bool = False) -> dict:
    """Build (or reuse) BUNDLE/engines/<gpu>-trt<ver>/model.<precision>.plan with its JSON sidecar."""
    manifest = load_manifest(bundle)
    verify(bundle)
    rel = model_file(manifest, precision)
    onnx_path = bundle / rel
    onnx_sha = manifest["files"][rel]["sha256"]
    trt_version, gpu = tensorrt_version(), gpu_name()
    if trt_version is None:
        raise DeviceError("TensorRT is not installed on this device (no python3-libnvinfer / tensorrt package)")
    io = manifest["io"]
    first, *chw = io["input"]["shape"]
    # A static-batch graph (export --static-batch N) has one profile, N..N, whatever batch sizes were asked for.
    fixed = None if io["input"].get("dynamic_batch", True) else int(first)
    lo, hi = (fixed, fixed) if fixed else (1, max_batch)
    engine_dir = bundle / "engines" / f"{_slug(gpu or 'gpu')}-trt{trt_version}"
    plan, sidecar = engine_dir / f"model.{precision}.plan", engine_dir / f"model.{precision}.json"
    if not force and _reusable(sidecar, plan, onnx_sha, trt_version, gpu, hi):
        return {"engine": str(plan), "sidecar": str(sidecar), "reused": True, "builder": json.loads(sidecar.read_text())["builder"]}
    if not force:
        source = find_sibling_engine(bundle, engine_dir.name, precision, onnx_sha, trt_version, gpu, hi)
        if source is not None:
            adopt_engine(source, plan, sidecar)
            return {"engine": str(plan), "sidecar": str(sidecar), "reused": True, "reused_from": str(source[0]),
                    "builder": json.loads(sidecar.read_text())["builder"]}
    engine_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(dir=engine_dir, prefix=".build-") as tmp:
        tmp_plan = Path(tmp) / plan.name
        if shutil.which("edgetl") and _run(["edgetl", "build", "--help"], timeout=60) is not None:
            builder = "edgetl"
            command = ["edgetl", "build", str(bundle), "--precision", precision, "--batch", f"{lo},{hi},{hi}"]
            _check_call(command, "edgetl build")
            built = sorted((bundle / "engines").glob(f"*/model.{precision}.plan"), key=lambda p: p.stat().st_mtime)
            if not built:
                raise DeviceError(f"`edgetl build` finished but wrote no engines/*/model.{precision}.plan")
            shutil.copyfile(built[-1], tmp_plan)
            try:  # edgetl's own sidecar (CUDA's GPU name, compute capability) keeps the engine loadable by `edgetl bench`
                own = json.loads(built[-1].with_suffix(".json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                own = {}
        else:
            trtexec = find_trtexec()
            if trtexec is None:
                raise DeviceError("neither edgetl nor trtexec is installed on this device: cannot build an engine",)
            name = io["input"]["name"]
            shape = lambda b: f"{name}:" + "x".join(str(d) for d in [b, *chw])  # noqa: E731
            command = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={tmp_plan}", "--skipInference"]
            if not fixed:
                command += [f"--minShapes={shape(lo)}", f"--optShapes={shape(hi)}", f"--maxShapes={shape(hi)}"]
            help_text = subprocess.run([trtexec, "--help"], capture_output=True, text=True).stdout
            if "--stronglyTyped" in help_text:
                command.append("--stronglyTyped")  # precision is baked into the ONNX graph
            elif precision in ("int8", "fp16"):
                command += ["--int8", "--fp16"] if precision == "int8" else ["--fp16"]  # TensorRT 8.6: weak typing
            builder, own = "trtexec", {}
            _check_call(command, "trtexec")
        if not tmp_plan.is_file() or tmp_plan.stat().st_size == 0:
            raise DeviceError(f"{builder} wrote no engine")
        os.replace(tmp_plan, plan)
    # Field names follow `edgetl build`'s sidecar (format edgetl-engine/1) where they mean the same thing.
    dims = lambda b: [b, *chw]  # noqa: E731
    meta = {
        "format": "edgetl-engine/1", "gpu_name": gpu, "source_onnx": rel, "source_onnx_sha256": onnx_sha,
        "profile": {"input": io["input"]["name"], "min": dims(lo), "opt": dims(hi), "max": dims(hi)},
        "card": manifest["card"], "precision": precision, "onnx_file": rel, "onnx_sha256": onnx_sha,
        "engine_file": plan.name, "engine_sha256": sha256_file(plan), "tensorrt_version": trt_version, "gpu": gpu,
        "device_model": _read("/proc/device-tree/model"), "l4t": l4t_release(), "builder": builder,
        "command": [str(c) for c in command], "max_batch": hi, "build_seconds": round(time.time() - started, 1),
        "built_by": "edgetl_device.py",
    }
    meta.update({k: v for k, v in own.items() if k not in ("builder", "command", "max_batch", "gpu")})
    _write_json(sidecar, meta)
    return {"engine": str(plan), "sidecar": str(sidecar), "reused": False, "builder": builder}


def _check_call(command: list, what: str) -> None:
    res = subprocess.run(command, capture_output=True, text=True)
    if res.returncode != 0:
        tail = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()][-3:]
        raise DeviceError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}")


def _write_json(path: Path, obj) -> None:
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
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) else None
        self.device = device

    def __call__(self, x):
        return self.session.run(None, {self.input_name: x})[0]

    def close(self):
        del self.session


class _Cudart:
    """The five CUDA runtime calls the TensorRT runner needs, through ctypes: JetPack always ships
    libcudart, while cuda-python is an extra install."""

    def __init__(self):
        import ctypes
        import ctypes.util

        self.ctypes = ctypes
        candidates = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0",
                      "/usr/local/cuda/lib64/libcudart.so"]
        for name in candidates:
            if not name:
                continue
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise DeviceError("libcudart.so not found (is CUDA from JetPack installed?)")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise DeviceError(f"CUDA {what} failed (cudaError {rc})")

    def malloc(self, nbytes: int) -> int:
        ptr = self.ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(self.ctypes.byref(ptr), self.ctypes.c_size_t(max(int(nbytes), 1))), "cudaMalloc")
        return ptr.value

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:  # kind 1: host->device, 2: device->host
        c = self.ctypes
        self._check(self.lib.cudaMemcpyAsync(c.c_void_p(dst), c.c_void_p(src), c.c_size_t(nbytes), c.c_int(kind),
                                             self.stream), "cudaMemcpyAsync")

    def sync(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(self.ctypes.c_void_p(ptr))


class TrtRunner:
    """A TensorRT 10 engine: copy in, enqueue, copy out, synchronize (what one call of __call__ times)."""

    def __init__(self, plan: Path, max_batch: int):
        import numpy as np

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
        self.cuda = _Cudart()
        self.sample = shape[1:]
        self.d_in = self.cuda.malloc(self.max_batch * int(np.prod(self.sample)) * self.in_dtype.itemsize)
        self.context.set_input_shape(self.input, (self.max_batch, *self.sample))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        self.d_out = self.cuda.malloc(int(np.prod(out_shape)) * self.out_dtype.itemsize)
        self.context.set_tensor_address(self.input, self.d_in)
        self.context.set_tensor_address(self.output, self.d_out)
        self.device = "cuda"

    def __call__(self, x):
        np = self.np
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self.context.set_input_shape(self.input, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype)
        self.cuda.copy(self.d_in, x.ctypes.data, x.nbytes, 1)
        if not self.context.execute_async_v3(self.cuda.stream.value):
            raise DeviceError("TensorRT execute_async_v3 failed")
        self.cuda.copy(out.ctypes.data, self.d_out, out.nbytes, 2)
        self.cuda.sync()
        return out

    def close(self):
        self.cuda.free(self.d_in)
        self.cuda.free(self.d_out)


# -- benchmark ----------------------------------------------------------------------------------------

def _batches(x, y, size: int, fixed: bool):
    for start in range(0, len(x), size):
        xb, yb = x[start:start + size], y[start:start + size]
        n = len(xb)
        if fixed and n < size:  # a static-batch graph: pad with the first image, score only the real ones
            import numpy as np

            xb = np.concatenate([xb, np.repeat(xb[:1], size - n, axis=0)])
        yield xb, yb, n


def bench(bundle: Path, backend: str, precision, batch_sizes: list, warmup: int, iterations: int,
          device: str = "auto", out=None) -> dict:
    """Accuracy on the bundle's preprocessed images and latency per batch size, as bench.json rows."""
    import numpy as np

    manifest = load_manifest(bundle)
    verify(bundle)
    precision = precision or manifest["precision"]
    x = np.load(bundle / manifest["data"]["inputs"], allow_pickle=False)
    y = np.load(bundle / manifest["data"]["labels"], allow_pickle=False)
    engine_info = None
    if backend == "tensorrt":
        engine_info = build(bundle, precision, max(batch_sizes))
        runner = TrtRunner(Path(engine_info["engine"]), max(batch_sizes))
        model_rel = Path(engine_info["engine"]).relative_to(bundle).as_posix()
    elif backend == "onnxruntime":
        cpu = device == "cpu" or (device == "auto" and not _ort_has_cuda())
        model_rel = model_file(manifest, precision, "cpu" if cpu else "tensorrt")
        runner = OrtRunner(bundle / model_rel, "cpu" if cpu else "cuda")
    else:
        raise DeviceError(f"unknown backend {backend!r} (use tensorrt or onnxruntime)")
    try:
        fixed = runner.fixed_batch
        sizes = [fixed] if fixed else sorted(set(int(b) for b in batch_sizes))
        correct = 0
        for xb, yb, n in _batches(x, y, sizes[-1], bool(fixed)):
            logits = runner(xb)[:n]
            correct += int((np.asarray(logits).argmax(axis=1) == yb).sum())
        top1 = correct / len(y)
        reference = manifest.get("reference") or {}
        ref_top1 = reference.get("top1")
        system = facts()
        rows = []
        for b in sizes:
            xb = x[np.arange(b) % len(x)]
            for _ in range(warmup):
                runner(xb)
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                runner(xb)  # returns host data: every call is synchronised
                times.append((time.perf_counter() - t0) * 1e3)
            t = np.asarray(times)
            rows.append({
                "backend": backend, "precision": precision, "batch_size": b, "device": runner.device,
                "model_file": model_rel,
                "latency_ms": {"mean": float(t.mean()), "p50": float(np.percentile(t, 50)),
                               "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99))},
                "throughput_ips": float(b / (t.mean() / 1e3)),
                "top1": top1, "top1_drop": (ref_top1 - top1) if ref_top1 is not None else None,
                "n_images": int(len(y)), "warmup": warmup, "iterations": iterations,
                "timed": "host->device copy + compute + device->host copy" if backend == "tensorrt" else "session.run (host in, host out)",
                "where": "device",
            })
    finally:
        runner.close()
    doc = {"rows": rows, "system": system, "reference": reference,
           "bundle": {"run": manifest.get("run"), "bundle_sha256": sha256_file(bundle / MANIFEST),
                      "edgetl_version": manifest.get("edgetl_version")},
           "engine": engine_info}
    if out:
        out = Path(out) if os.path.isabs(str(out)) else bundle / out
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_json(out, doc)
        doc["written"] = str(out)
    return doc


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


# -- command line -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgetl_device.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every bundle file's size and SHA-256")
    p.add_argument("--dir", default=str(HERE))
    sub.add_parser("facts", help="device model, JetPack/L4T, TensorRT, power mode, clocks")
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
        if args.command == "verify":
            result = verify(Path(args.dir))
        elif args.command == "facts":
            result = facts()
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
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
