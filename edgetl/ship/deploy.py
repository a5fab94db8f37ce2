"""`edgetl deploy`: ship a run's bundle to a device over ssh, build and benchmark there, bring the results home.

`deploy(run, cfg, events) -> DeployResult` does one device; `edgetl.ship.fleet.deploy_fleet` runs the same steps on
many devices at once. Steps (each reported through `events` as it runs):
  1. connect    one multiplexed OpenSSH connection (unreachable host / refused key: one clear line)
  2. check      device facts (Python, numpy, TensorRT / onnxruntime, GPU, free disk, L4T, power mode, clocks):
                a device that cannot run the chosen backend stops here, before anything is bundled or sent,
                with the setting that fixes it (backend onnxruntime, python PATH, remote_dir)
  3. bundle     RUN/bundles/<precision>/ (reused when its sources are unchanged)
  4. upload     into <remote_dir>/<run>/.<hash>.partial/, skipping files already there with the right
                SHA-256 and appending to a partial one; then the device verifies every hash and renames the
                folder to <remote_dir>/<run>/<hash>/. A broken connection leaves only the .partial folder,
                which the next run resumes. A bundle already installed (and still verifying) is not re-sent.
  5. build      the TensorRT engine on the device (reused when ONNX, TensorRT and GPU are unchanged)
  6. bench      accuracy + latency there (tensorrt, or onnxruntime with backend onnxruntime)
  7. fetch      bench.json, facts.json and the engine sidecar into RUN/devices/<user@host>[_port]/
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

from pydantic import Field, PositiveInt, field_validator

from edgetl.ship.bundle import MANIFEST, Bundle, device_program, make_bundle, model_files
from edgetl.choices import FLEET_JOBS_MAX, DeployBackendName, DeployDeviceName, EnginePrecisionName
from edgetl.ship.destinations import (
    Destination,
    parse_destination,
    read_hosts_file,
    unique_destinations,
)
from edgetl.errors import DeployError
from edgetl.io import read_json, write_json
from edgetl.portable import protocol
from edgetl.portable.rows import compare_rows
from edgetl.portable.trtexec import tensorrt_unsupported
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, Settings, record_settings
from edgetl.ship.transport import SSHTransport, host_slug, remote_path

MIN_PYTHON = (3, 8)  # what the device side (edgetl_device.py + portable/) runs on: JetPack 5 ships 3.8
SPACE_MARGIN = 64 << 20  # room for the engine and results next to the bundle


class DeploySettings(Settings):
    """Everything `edgetl deploy` takes. `hosts` (and `hosts_file`) name the devices; the rest applies to each."""

    hosts: List[str] = Field(default_factory=list, description="ssh destination: user@host, user@host:port or a Host "
                             "alias of ~/.ssh/config; repeatable: several devices deploy in parallel")
    hosts_file: Optional[str] = Field(None, description="file of destinations, one a line (user@host or "
                                      "user@host:port), # comments; deploys to all of them")
    jobs: int = Field(4, ge=1, le=FLEET_JOBS_MAX, description="devices deployed at once")
    port: Optional[int] = Field(None, ge=1, le=65535, description="ssh port where a destination names none (ssh -p)")
    identity: Optional[str] = Field(None, description="private key file (ssh -i, IdentitiesOnly)")
    ssh_options: List[str] = Field(default_factory=list, description="extra ssh argument, repeatable (e.g. "
                                   "-oProxyJump=gateway)")
    connect_timeout: int = Field(15, ge=1, description="seconds ssh waits for a connection")
    precision: EnginePrecisionName = "fp32"
    backend: DeployBackendName = Field("tensorrt", description="tensorrt (engine built on the device) | onnxruntime")
    device: DeployDeviceName = Field("auto", description="onnxruntime backend: auto | cpu | cuda")
    bench: bool = Field(False, description="benchmark on the device and fetch bench.json")
    build: bool = Field(True, description="build the TensorRT engine on the device")
    force: bool = Field(False, description="replace a bundle on the device that no longer verifies")
    batch_sizes: List[PositiveInt] = Field(default_factory=lambda: [1, 8], min_length=1, description="repeatable")
    warmup: int = Field(10, ge=0, description="untimed runs per batch size")
    iterations: int = Field(100, ge=1, description="timed runs per batch size")
    max_images: int = Field(256, ge=1, description="validation images carried for the accuracy check")
    remote_dir: str = Field("~/edgetl", description="bundles go to REMOTE_DIR/<run>/<bundle-hash>/ on the device")
    python: str = Field("python3", description="the device's Python interpreter (one with numpy)")

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: List[str]) -> List[str]:
        for host in hosts:
            parse_destination(host)  # a DeployError names the bad one
        return hosts

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # "1,8" from a YAML string, as bench takes it
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class DeployResult(Result):
    """What one deploy did and measured: exactly RUN/devices/<user@host>[_port]/deploy.json."""

    host: str  # the ssh destination, [user@]host (no port)
    port: Optional[int]
    device_dir: str  # where the results landed, relative to the run: devices/<user@host>[_port]
    remote_dir: str  # the installed bundle folder on the device
    bundle_sha256: str
    bundle_reused: bool  # the bundle here was unchanged, not written anew
    precision: str
    backend: str
    uploaded: List[str]
    resumed: List[str]
    skipped: List[str]
    installed: bool  # the bundle folder was (re)installed by this deploy
    engine: Optional[dict]  # the device's build report (tensorrt)
    facts: dict  # what the device reported about itself (also facts.json)
    rows: List[dict]  # the bench rows measured there (portable.rows.ROW_KEYS); empty without bench
    edgetl_version: str
    time: str


def destinations(cfg: DeploySettings, events: Events = SILENT) -> list[Destination]:
    """The devices `cfg` names (hosts, then hosts_file), each once; a repeated one is said and dropped."""
    entries = list(cfg.hosts) + (read_hosts_file(cfg.hosts_file) if cfg.hosts_file is not None else [])
    if not entries:
        raise DeployError("hosts: no destination given", "name a device as [user@]host[:port], or a hosts_file")
    found, repeats = unique_destinations(entries, cfg.port)
    for line in repeats:
        events.warning(line)
    return found


def resolved(cfg: DeploySettings, found: list[Destination]) -> DeploySettings:
    """The settings as they were applied: the hosts file read into `hosts` (each device once), so the recorded
    RUN/settings/deploy.yaml repeats this deploy even after the file changes."""
    return cfg.model_copy(update={"hosts": [d.label for d in found], "hosts_file": None, "port": None})


def deploy(run_path: str | os.PathLike, cfg: DeploySettings, events: Events = SILENT) -> DeployResult:
    """Bundle, upload, verify, build, benchmark and fetch on the one device `cfg` names (module docstring)."""
    found = destinations(cfg, events)
    if len(found) != 1:
        raise DeployError(f"hosts: {len(found)} devices given, deploy() takes one",
                          "deploy to several with edgetl.ship.fleet.deploy_fleet (edgetl deploy does)")
    run = RunDir(run_path)
    model_files(run, cfg.precision)  # a run that cannot be bundled fails before any connection
    record_settings(run.path, "deploy", resolved(cfg, found))
    return deploy_to(run, cfg, found[0], events)


@contextlib.contextmanager
def _step(events: Events, text: str, stop: threading.Event | None = None) -> Iterator[dict]:
    """One step: its text as the status while it runs, one line when it ends (`note['done']` adds a detail)."""
    if stop is not None and stop.is_set():
        raise DeployError(f"stopped before: {text}")
    note: dict = {}
    start = time.perf_counter()
    events.status(text)
    yield note
    extra = f" - {note['done']}" if note.get("done") else ""
    events.message(f"done {text}{extra} ({time.perf_counter() - start:.1f} s)")


def step_count(cfg: DeploySettings, bundled: bool) -> int:
    """How many steps deploy_to reports for `cfg` (`bundled`: the bundle was made beforehand)."""
    return 3 + (not bundled) + (cfg.build and cfg.backend == "tensorrt") + cfg.bench


class DeviceCalls:
    """The device script's commands over one connection: a typed request (portable/protocol.py) out, its
    JSON reply back; the program is this edgetl's own, sent on stdin each time."""

    def __init__(self, transport: SSHTransport, python: str, name: str):
        self.transport, self.python, self.name = transport, python, name
        self.program = device_program()

    def __call__(self, request, timeout: float | None = None) -> dict:
        what = protocol.command_of(request)
        res = self.transport.run_python(self.python, self.program, request.argv(), what=what, timeout=timeout)
        try:
            return json.loads(res.stdout)
        except ValueError:
            raise DeployError(f"{self.name}: `{what}` printed no JSON result ({res.stdout[:80]!r})") from None


def device_requests(cfg: DeploySettings, final: str) -> tuple[protocol.Build | None, protocol.Bench | None]:
    """What the device is asked to do in the installed bundle `final`: build (tensorrt), bench; None for a
    step the settings leave out. Pure: the plan of a deploy, before any connection."""
    build = (protocol.Build(final, cfg.precision, max(cfg.batch_sizes))
             if cfg.build and cfg.backend == "tensorrt" else None)
    bench = (protocol.Bench(final, cfg.backend, cfg.precision, cfg.device, tuple(cfg.batch_sizes), cfg.warmup,
                            cfg.iterations, out=f"results/{cfg.backend}-{cfg.precision}/bench.json")
             if cfg.bench else None)
    return build, bench


def deploy_to(run: RunDir, cfg: DeploySettings, dest: Destination, events: Events = SILENT,
              bundle: Bundle | None = None, claim: Callable[[str], None] | None = None,
              stop: threading.Event | None = None) -> DeployResult:
    """The steps for one destination. `bundle`: one made beforehand (a fleet bundles once); `claim(slug)` may
    refuse a results folder another destination of the same fleet already writes; `stop` ends it at the next step."""
    name = dest.label
    transport = SSHTransport(dest.target, cfg.ssh_options, connect_timeout=cfg.connect_timeout, port=dest.port,
                             identity=cfg.identity)  # validates the host, port and key first
    device = DeviceCalls(transport, cfg.python, name)
    # Connect first: an unreachable host or a refused key should not wait for the bundle to be made.
    with _step(events, f"connect to {name}", stop):
        transport.open()
    try:
        base = remote_path(cfg.remote_dir).rstrip("/") or "/"
        facts = _check(device, cfg, name, base, events, stop)
        slug = host_slug(dest.target, user=facts.get("user"), port=dest.port)
        if claim is not None:
            claim(slug)
        events.record("device", {"device_dir": f"{run.devices_dir.name}/{slug}", "facts": facts})
        if bundle is None:
            with _step(events, f"bundle {cfg.precision}", stop) as note:
                bundle = make_bundle(run, cfg.precision, max_images=cfg.max_images)
                note["done"] = f"{'unchanged' if bundle.reused else 'written'}, {bundle.short_hash}"
        parent = f"{base}/{bundle.manifest['run']}"
        final, staging = f"{parent}/{bundle.short_hash}", f"{parent}/.{bundle.short_hash}.partial"
        sent: dict[str, list[str]] = {"uploaded": [], "resumed": [], "skipped": []}
        with _step(events, f"upload to {name}:{final}", stop) as note:
            installed = _upload(transport, events, bundle, final, staging, cfg.force, device, facts, sent)
            note["done"] = (f"{len(sent['uploaded'])} sent, {len(sent['resumed'])} resumed, "
                            f"{len(sent['skipped'])} already there" if installed else "already installed and verified")
        local = run.devices_dir / slug
        write_json(local / "facts.json", facts)
        build_request, bench_request = device_requests(cfg, final)
        engine = _build(device, build_request, local, events, stop)
        rows = _bench(device, bench_request, local, events, stop)
        result = DeployResult(
            host=dest.target, port=dest.port, device_dir=local.relative_to(run.path).as_posix(), remote_dir=final,
            bundle_sha256=bundle.sha256, bundle_reused=bundle.reused, precision=cfg.precision, backend=cfg.backend,
            uploaded=sent["uploaded"], resumed=sent["resumed"], skipped=sent["skipped"], installed=installed,
            engine=engine.to_dict() if engine else None, facts=facts, rows=rows,
            edgetl_version=bundle.manifest["edgetl_version"], time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        result.write(local / "deploy.json")
    finally:
        transport.close()
    return result


def _check(device: DeviceCalls, cfg: DeploySettings, name: str, base: str, events: Events,
           stop: threading.Event | None) -> dict:
    """The device's facts, refused (check_device) when it cannot run what `cfg` asks."""
    with _step(events, f"check {name}", stop) as note:
        facts = device(protocol.Facts(base))
        check_device(facts, host=name, python=cfg.python, backend=cfg.backend, device=cfg.device,
                     needs_trt=cfg.backend == "tensorrt" and (cfg.build or cfg.bench), bench=cfg.bench)
        note["done"] = facts.get("model") or facts.get("machine") or ""
    return facts


def _build(device: DeviceCalls, request: protocol.Build | None, local: Path, events: Events,
           stop: threading.Event | None) -> protocol.BuildReply | None:
    """The engine built (or reused) on the device, its sidecar fetched into `local`/engines/."""
    if request is None:
        return None
    with _step(events, f"build the TensorRT engine on {device.name}", stop) as note:
        engine = protocol.BuildReply.from_dict(device(request))
        note["done"] = ("reused (ONNX, TensorRT and GPU unchanged)" if engine.reused else
                        f"built with {engine.builder}")
    sidecar = Path(engine.sidecar)  # a path as the device script saw it (relative to the login dir or absolute)
    device.transport.download(engine.sidecar, local / "engines" / sidecar.parent.name / sidecar.name)
    return engine


def _bench(device: DeviceCalls, request: protocol.Bench | None, local: Path, events: Events,
           stop: threading.Event | None) -> list[dict]:
    """The bench rows measured on the device, its bench.json fetched and merged into `local`/bench.json."""
    if request is None:
        return []
    with _step(events, f"benchmark {request.backend} {request.precision} on {device.name}", stop) as note:
        device(request)
        raw = local / f"bench.{request.backend}.{request.precision}.json"
        device.transport.download(f"{request.dir}/{request.out}", raw)
        report = protocol.BenchReply.from_dict(read_json(raw))
        _merge_bench(local / "bench.json", report.to_dict())
        row = report.rows[0]
        note["done"] = (f"ran {ran(report.rows)}: top-1 {row['top1']:.4f}, p50 {row['latency_ms']['p50']:.2f} ms "
                        f"at batch {row['batch_size']}")
    return report.rows


def check_device(facts: dict, *, host: str, python: str, backend: str, device: str, needs_trt: bool,
                 bench: bool) -> None:
    """Refuse, before anything is bundled or sent, a device that cannot run what was asked, naming the fix."""
    version = tuple(int(p) for p in str(facts.get("python") or "0").split(".")[:2] if p.isdigit())
    if version < MIN_PYTHON:
        raise DeployError(f"{host}: {python} is Python {facts.get('python')}; edgetl's device side needs "
                          f"{'.'.join(map(str, MIN_PYTHON))} or newer", "set python to the path of a newer Python there")
    where = facts.get("python_executable") or python
    if not facts.get("numpy"):
        raise DeployError(f"{host}: numpy is not installed for {where}",
                          f"`{python} -m pip install numpy` there, or set python to the path of a Python that has it")
    if needs_trt:
        switch = "set backend to onnxruntime to benchmark the ONNX model there instead"
        if not facts.get("tensorrt"):
            raise DeployError(f"{host}: TensorRT is not installed there", f"{switch}, or install TensorRT "
                              "(JetPack: sudo apt install nvidia-tensorrt; deploy/jetson-setup.sh)")
        too_old = tensorrt_unsupported(facts["tensorrt"])
        if too_old:
            raise DeployError(f"{host}: {too_old}", f"{switch}, or upgrade JetPack there (JetPack 6 ships TensorRT 10)")
        if not facts.get("compute_capability"):
            why = facts.get("no_gpu_reason") or "libcudart found none"  # older device scripts do not say why
            raise DeployError(f"{host}: no CUDA GPU is usable there ({why})", switch)
        if not (facts.get("trtexec") or facts.get("edgetl")):
            raise DeployError(f"{host}: neither trtexec nor edgetl is there to build the engine",
                              f"{switch}, or install trtexec (JetPack: sudo apt install tensorrt)")
        if bench and not facts.get("tensorrt_python"):
            raise DeployError(f"{host}: TensorRT's Python API is not importable by {where}",
                              f"{switch}, or install it (sudo apt install python3-libnvinfer), or set python to a Python that has it")
    if backend == "onnxruntime" and bench:
        if not facts.get("onnxruntime"):
            raise DeployError(f"{host}: onnxruntime is not installed for {where}",
                              f"`{python} -m pip install onnxruntime` there, or set python to a Python that has it, or backend to tensorrt")
        if device == "cuda" and "CUDAExecutionProvider" not in (facts.get("onnxruntime_providers") or []):
            raise DeployError(f"{host}: onnxruntime there has no CUDA provider",
                              "set device to cpu (or auto), or install an onnxruntime with CUDA there")


def ran(rows: list[dict]) -> str:
    """'model.int8.cpu.onnx on cpu': which file the device benchmarked (an int8 onnxruntime run on a CPU takes
    the CPU form), said on the terminal, not only in bench.json."""
    seen = dict.fromkeys(f"{r['model_file']} on {r['device']}" for r in rows)
    return ", ".join(seen) or "nothing"


def _upload(transport: SSHTransport, events: Events, bundle: Bundle, final: str, staging: str, force: bool,
            device: DeviceCalls, facts: dict, sent: dict[str, list[str]]) -> bool:
    """Install the bundle at `final` unless it is there and verifies; fills `sent`. True when it was installed."""
    # `test -d` rather than an inventory of the installed folder: verify hashes it anyway, once is enough.
    if transport.run(["test", "-d", final], check=False, what="test -d").returncode == 0:
        try:
            device(protocol.Verify(final))
            sent["skipped"] = sorted(bundle.manifest["files"]) + [MANIFEST]
            return False
        except DeployError as e:
            if "failed verification" not in e.message:
                raise  # not a changed bundle (a broken Python, a lost connection): force would not help
            if not force:
                raise DeployError(f"{e.message} [on {transport.name}:{final}]",
                                  "something changed the bundle on the device; re-run with force on to replace it") from None
            transport.run(["rm", "-rf", "--", final], what=f"rm -rf {final}")
    have = device(protocol.Inventory((staging,)))[staging]["files"]
    wanted = dict(bundle.manifest["files"])
    plan: list[tuple[str, int]] = []
    for rel, entry in sorted(wanted.items()):
        there = have.get(rel)
        if there and there["size"] == entry["size"] and there["sha256"] == entry["sha256"]:
            sent["skipped"].append(rel)
            continue
        offset = 0
        if there and 0 < there["size"] < entry["size"] and there["sha256"] == _prefix_sha256(bundle.path / rel, there["size"]):
            offset = there["size"]  # an interrupted copy of this very file: send the rest
        plan.append((rel, offset))
    plan.append((MANIFEST, 0))  # written last: a staging folder with a manifest has all its files
    need = sum((bundle.path / rel).stat().st_size - offset for rel, offset in plan)
    free = facts.get("free_bytes")
    if free is not None and free < need + SPACE_MARGIN:
        raise DeployError(f"{transport.name}: {free / 2**20:.0f} MiB free under {final.rsplit('/', 2)[0]}, the bundle "
                          f"needs {need / 2**20:.0f} MiB (+{SPACE_MARGIN >> 20} MiB for the engine and results)",
                          "free space there, or set remote_dir to a folder on a larger disk")
    folders = sorted({staging} | {f"{staging}/{os.path.dirname(rel)}" for rel, _ in plan if os.path.dirname(rel)})
    transport.run(["mkdir", "-p", "--", *folders], what=f"mkdir -p {staging}")
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        events.progress("uploading", done, need)

    events.progress("uploading", 0, need)
    for rel, offset in plan:
        transport.upload(bundle.path / rel, f"{staging}/{rel}", offset=offset, progress=advance)
        sent["resumed" if offset else "uploaded"].append(rel)
    if done < need:  # files that shrank since the plan: end the bar all the same
        events.progress("uploading", need, need)
    device(protocol.Verify(staging))
    transport.run(["mv", "--", staging, final], what="mv")
    return True


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


__all__ = ["DeployResult", "DeploySettings", "DeviceCalls", "check_device", "deploy", "deploy_to", "destinations",
           "device_requests", "ran", "resolved"]
