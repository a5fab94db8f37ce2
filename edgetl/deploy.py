"""`edgetl deploy`: ship a run's bundle to a device over ssh, build and benchmark there, bring the results home.

Steps (each shown as it runs):
  1. connect    one multiplexed OpenSSH connection (unreachable host / refused key: one clear line)
  2. check      device facts (Python, numpy, TensorRT / onnxruntime, GPU, free disk, L4T, power mode, clocks):
                a device that cannot run the chosen backend stops here, before anything is bundled or sent,
                with the option that fixes it (--backend onnxruntime, --python PATH, --remote-dir)
  3. bundle     RUN/bundles/<precision>/ (reused when its sources are unchanged)
  4. upload     into <remote-dir>/<run>/.<hash>.partial/, skipping files already there with the right
                SHA-256 and appending to a partial one; then the device verifies every hash and renames the
                folder to <remote-dir>/<run>/<hash>/. A broken connection leaves only the .partial folder,
                which the next run resumes. A bundle already installed (and still verifying) is not re-sent.
  5. build      the TensorRT engine on the device (reused when ONNX, TensorRT and GPU are unchanged)
  6. bench      accuracy + latency there (tensorrt, or onnxruntime with --backend onnxruntime)
  7. fetch      bench.json, facts.json and the engine sidecar into RUN/devices/<user@host>/
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgetl.bundle import MANIFEST, Bundle, device_program, make_bundle, model_files
from edgetl.errors import DeployError
from edgetl.io import read_json, write_json
from edgetl.portable.rows import compare_rows
from edgetl.rundir import RunDir
from edgetl.transport import SSHTransport, host_slug, remote_path

BACKENDS = ("tensorrt", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")  # onnxruntime's execution provider on the device
MIN_PYTHON = (3, 8)  # what the device side (edgetl_device.py + portable/) runs on: JetPack 5 ships 3.8
SPACE_MARGIN = 64 << 20  # room for the engine and results next to the bundle


@dataclass
class DeployResult:
    host: str
    remote_dir: str
    bundle: Bundle
    uploaded: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    installed: bool = False  # the bundle folder was (re)installed by this run
    facts: dict | None = None
    engine: dict | None = None
    bench: dict | None = None
    local_dir: Path | None = None
    written: list[Path] = field(default_factory=list)


class Steps:
    """Progress per step: a spinner while a step runs and one line when it ends (quiet for tests/libraries)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @contextlib.contextmanager
    def step(self, text: str, spinner: bool = True) -> Iterator[dict]:
        note: dict = {}
        start = time.perf_counter()
        if self.quiet:
            yield note
            return
        from edgetl.presentation.console import console

        # No spinner around a step that draws its own bar: older rich allows one live display at a time.
        with console.status(text) if spinner else contextlib.nullcontext():
            yield note
        extra = f" - {note['done']}" if note.get("done") else ""
        console.print(f"[green]done[/] {text}{extra} ({time.perf_counter() - start:.1f} s)")

    @contextlib.contextmanager
    def bytes(self, text: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.quiet or total == 0:
            yield lambda n: None
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        from edgetl.presentation.console import console

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(text, total=total)
            yield lambda n: progress.update(task, advance=n)


def deploy(run_path: str | os.PathLike, host: str, precision: str = "fp32", bench: bool = False,
           backend: str = "tensorrt", remote_dir: str = "edgetl", python: str = "python3",
           ssh_options: Sequence[str] = (), batch_sizes: Sequence[int] = (1, 8), warmup: int = 10,
           iterations: int = 100, max_images: int = 256, build: bool = True, force: bool = False,
           device: str = "auto", quiet: bool = False, connect_timeout: int = 15, port: int | None = None,
           identity: str | os.PathLike | None = None) -> DeployResult:
    """Bundle, upload, verify, build, benchmark and fetch, as the module docstring lists. Returns what it did."""
    if backend not in BACKENDS:
        raise DeployError(f"--backend {backend}: not one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise DeployError(f"--device {device}: not one of {', '.join(DEVICES)}")
    if not batch_sizes or min(batch_sizes) < 1 or iterations < 1 or warmup < 0:
        raise DeployError("--batch-size values must be >= 1, --iterations >= 1 and --warmup >= 0")
    run = RunDir(run_path)
    model_files(run, precision)  # a run that cannot be bundled fails before any connection
    steps = Steps(quiet)
    transport = SSHTransport(host, ssh_options, connect_timeout=connect_timeout, port=port,
                             identity=identity)  # validates the host, port and key first
    program = device_program()

    def device_cmd(*args: str, what: str, timeout: float | None = None) -> dict:
        res = transport.run_python(python, program, list(args), what=what, timeout=timeout)
        try:
            return json.loads(res.stdout)
        except ValueError:
            raise DeployError(f"{host}: `{what}` printed no JSON result ({res.stdout[:80]!r})") from None

    # Connect first: an unreachable host or a refused key should not wait for the bundle to be made.
    with steps.step(f"connect to {host}"):
        transport.open()
    try:
        base = remote_path(remote_dir).rstrip("/") or "/"
        with steps.step(f"check {host}") as note:
            device_facts = device_cmd("facts", "--space", base, what="facts")
            check_device(device_facts, host=host, python=python, backend=backend, device=device,
                         needs_trt=backend == "tensorrt" and (build or bench), bench=bench)
            note["done"] = device_facts.get("model") or device_facts.get("machine") or ""
        with steps.step(f"bundle {precision}") as note:
            bundle = make_bundle(run, precision, max_images=max_images)
            note["done"] = f"{'unchanged' if bundle.reused else 'written'}, {bundle.short_hash}"
        parent = f"{base}/{bundle.manifest['run']}"
        final, staging = f"{parent}/{bundle.short_hash}", f"{parent}/.{bundle.short_hash}.partial"
        result = DeployResult(host=host, remote_dir=final, bundle=bundle, facts=device_facts)
        with steps.step(f"upload to {host}:{final}", spinner=False) as note:
            _upload(transport, steps, bundle, final, staging, force, device_cmd, result)
            note["done"] = (f"{len(result.uploaded)} sent, {len(result.resumed)} resumed, {len(result.skipped)} already there"
                            if result.installed else "already installed and verified")
        local = run.devices_dir / host_slug(host, user=device_facts.get("user"), port=port)
        result.local_dir = local
        result.written.append(write_json(local / "facts.json", result.facts))
        if build and backend == "tensorrt":
            with steps.step("build the TensorRT engine on the device") as note:
                result.engine = device_cmd("build", "--dir", final, "--precision", precision,
                                           "--max-batch", str(max(batch_sizes)), what="build")
                note["done"] = "reused (ONNX, TensorRT and GPU unchanged)" if result.engine["reused"] else \
                    f"built with {result.engine['builder']}"
            sidecar = result.engine["sidecar"]  # a path as the device script saw it (relative to the login dir or absolute)
            dest = local / "engines" / Path(sidecar).parent.name / Path(sidecar).name
            result.written.append(transport.download(sidecar, dest))
        if bench:
            out = f"results/{backend}-{precision}/bench.json"
            with steps.step(f"benchmark {backend} {precision} on the device") as note:
                args = ["bench", "--dir", final, "--backend", backend, "--precision", precision, "--device", device,
                        "--batch-sizes", ",".join(str(b) for b in batch_sizes), "--warmup", str(warmup),
                        "--iterations", str(iterations), "--out", out]
                device_cmd(*args, what="bench")
                raw = local / f"bench.{backend}.{precision}.json"
                transport.download(f"{final}/{out}", raw)
                result.bench = read_json(raw)
                result.written += [raw, _merge_bench(local / "bench.json", result.bench)]
                row = result.bench["rows"][0]
                note["done"] = (f"ran {ran(result.bench)}: top-1 {row['top1']:.4f}, p50 {row['latency_ms']['p50']:.2f} ms "
                                f"at batch {row['batch_size']}")
        result.written.append(write_json(local / "deploy.json", {
            "host": host, "remote_dir": final, "bundle_sha256": bundle.sha256, "precision": precision,
            "backend": backend, "uploaded": result.uploaded, "resumed": result.resumed, "skipped": result.skipped,
            "installed": result.installed, "engine": result.engine, "edgetl_version": bundle.manifest["edgetl_version"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    finally:
        transport.close()
    return result


def check_device(facts: dict, *, host: str, python: str, backend: str, device: str, needs_trt: bool,
                 bench: bool) -> None:
    """Refuse, before anything is bundled or sent, a device that cannot run what was asked, naming the fix."""
    version = tuple(int(p) for p in str(facts.get("python") or "0").split(".")[:2] if p.isdigit())
    if version < MIN_PYTHON:
        raise DeployError(f"{host}: {python} is Python {facts.get('python')}; edgetl's device side needs "
                          f"{'.'.join(map(str, MIN_PYTHON))} or newer", "pass --python PATH to a newer Python there")
    where = facts.get("python_executable") or python
    if not facts.get("numpy"):
        raise DeployError(f"{host}: numpy is not installed for {where}",
                          f"`{python} -m pip install numpy` there, or pass --python PATH to a Python that has it")
    if needs_trt:
        switch = "pass --backend onnxruntime to benchmark the ONNX model there instead"
        if not facts.get("tensorrt"):
            raise DeployError(f"{host}: TensorRT is not installed there", f"{switch}, or install TensorRT "
                              "(JetPack: sudo apt install nvidia-tensorrt; deploy/jetson-setup.sh)")
        if not facts.get("compute_capability"):
            raise DeployError(f"{host}: no CUDA GPU is visible there (libcudart found none)", switch)
        if not (facts.get("trtexec") or facts.get("edgetl")):
            raise DeployError(f"{host}: neither trtexec nor edgetl is there to build the engine",
                              f"{switch}, or install trtexec (JetPack: sudo apt install tensorrt)")
        if bench and not facts.get("tensorrt_python"):
            raise DeployError(f"{host}: TensorRT's Python API is not importable by {where}",
                              f"{switch}, or install it (sudo apt install python3-libnvinfer), or --python PATH")
    if backend == "onnxruntime" and bench:
        if not facts.get("onnxruntime"):
            raise DeployError(f"{host}: onnxruntime is not installed for {where}",
                              f"`{python} -m pip install onnxruntime` there, or --python PATH, or --backend tensorrt")
        if device == "cuda" and "CUDAExecutionProvider" not in (facts.get("onnxruntime_providers") or []):
            raise DeployError(f"{host}: onnxruntime there has no CUDA provider",
                              "pass --device cpu (or auto), or install an onnxruntime with CUDA there")


def ran(doc: dict) -> str:
    """'model.int8.cpu.onnx on cpu': which file the device benchmarked (an int8 onnxruntime run on a CPU takes
    the CPU form), said on the terminal, not only in bench.json."""
    seen = dict.fromkeys(f"{r['model_file']} on {r['device']}" for r in doc.get("rows", []))
    return ", ".join(seen) or "nothing"


def _upload(transport: SSHTransport, steps: Steps, bundle: Bundle, final: str, staging: str, force: bool,
            device_cmd, result: DeployResult) -> None:
    # `test -d` rather than an inventory of the installed folder: verify hashes it anyway, once is enough.
    if transport.run(["test", "-d", final], check=False, what="test -d").returncode == 0:
        try:
            device_cmd("verify", "--dir", final, what="verify")
            result.skipped = sorted(bundle.manifest["files"]) + [MANIFEST]
            return
        except DeployError as e:
            if "failed verification" not in e.message:
                raise  # not a changed bundle (a broken Python, a lost connection): --force would not help
            if not force:
                raise DeployError(f"{e.message} [on {transport.host}:{final}]",
                                  "something changed the bundle on the device; re-run with --force to replace it") from None
            transport.run(["rm", "-rf", "--", final], what=f"rm -rf {final}")
    have = device_cmd("inventory", staging, what="inventory")[staging]["files"]
    wanted = dict(bundle.manifest["files"])
    plan: list[tuple[str, int]] = []
    for rel, entry in sorted(wanted.items()):
        there = have.get(rel)
        if there and there["size"] == entry["size"] and there["sha256"] == entry["sha256"]:
            result.skipped.append(rel)
            continue
        offset = 0
        if there and 0 < there["size"] < entry["size"] and there["sha256"] == _prefix_sha256(bundle.path / rel, there["size"]):
            offset = there["size"]  # an interrupted copy of this very file: send the rest
        plan.append((rel, offset))
    plan.append((MANIFEST, 0))  # written last: a staging folder with a manifest has all its files
    need = sum((bundle.path / rel).stat().st_size - offset for rel, offset in plan)
    free = (result.facts or {}).get("free_bytes")
    if free is not None and free < need + SPACE_MARGIN:
        raise DeployError(f"{transport.host}: {free / 2**20:.0f} MiB free under {final.rsplit('/', 2)[0]}, the bundle "
                          f"needs {need / 2**20:.0f} MiB (+{SPACE_MARGIN >> 20} MiB for the engine and results)",
                          "free space there, or pass --remote-dir on a larger disk")
    folders = sorted({staging} | {f"{staging}/{os.path.dirname(rel)}" for rel, _ in plan if os.path.dirname(rel)})
    transport.run(["mkdir", "-p", "--", *folders], what=f"mkdir -p {staging}")
    with steps.bytes("uploading", need) as advance:
        for rel, offset in plan:
            transport.upload(bundle.path / rel, f"{staging}/{rel}", offset=offset, progress=advance)
            (result.resumed if offset else result.uploaded).append(rel)
    device_cmd("verify", "--dir", staging, what="verify")
    transport.run(["mv", "--", staging, final], what="mv")
    result.installed = True


def _prefix_sha256(path: Path, n: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = n
        while left > 0:
            block = f.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _merge_bench(path: Path, doc: dict) -> Path:
    """RUN/devices/<user@host>/bench.json: the latest rows per (backend, precision, batch size) across deploys,
    compared again (speedup, flags) now that they sit together."""
    rows = []
    if path.exists():
        try:
            rows = read_json(path).get("rows", [])
        except (OSError, ValueError):
            rows = []
    fresh = {(r["backend"], r["precision"], r["batch_size"]) for r in doc["rows"]}
    rows = [r for r in rows if (r.get("backend"), r.get("precision"), r.get("batch_size")) not in fresh] + doc["rows"]
    rows.sort(key=lambda r: (r["backend"], r["precision"], r["batch_size"]))
    compare_rows(rows, doc.get("reference") or {})
    return write_json(path, {"rows": rows, "system": doc["system"], "reference": doc.get("reference"),
                             "where": "measured on the device by edgetl_device.py"})


__all__ = ["BACKENDS", "DeployResult", "check_device", "deploy", "ran"]
