"""A fleet deploy: the run bundled once, then shipped to, built and benchmarked on many devices at once.

`deploy_fleet(run, cfg, events) -> FleetResult`. Each device runs `edgetl.ship.deploy.deploy_to` in a thread (the
work is ssh subprocesses), at most `cfg.jobs` at a time. A device that fails (unreachable, closed port,
refused key, failed device check, an error on the device) is one line in the result; the others finish.
Results land per device in RUN/devices/<user@host>[_port]/ as for one device, and the fleet's table in
RUN/fleet.json (this Result), RUN/fleet.md and RUN/fleet.png.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from edgetl.ship.bundle import Bundle, make_bundle, model_files
from edgetl.ship.deploy import (
    DeployResult,
    DeploySettings,
    deploy_to,
    destinations,
    ran,
    resolved,
    step_count,
)
from edgetl.ship.destinations import Destination
from edgetl.errors import DeployError, EdgetlError, first_line
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, record_settings
from edgetl.ship.transport import SSHTransport
from edgetl.ship.fleet_result import FleetHost, FleetResult, FleetRow


class HostEvents(Events):
    """One device's events inside a fleet: its steps become one live line (a `fleet_host` record), so many
    devices stay readable; its warnings are printed with its name."""

    def __init__(self, parent: Events, host: str, total: int):
        self.parent, self.host, self.total = parent, host, total
        self.done, self.step = 0, "waiting"
        self.device: dict = {}  # device_dir and facts, once the device has said who it is

    def _show(self, detail: str = "") -> None:
        self.parent.record("fleet_host", {"host": self.host, "state": "running", "step": self.step + detail,
                                          "done": self.done, "total": self.total})

    def status(self, text: str) -> None:
        for named, short in ((f" to {self.host}:", " to "), (f" on {self.host}", ""), (f" to {self.host}", ""),
                             (f" {self.host}", "")):
            text = text.replace(named, short)
        self.step = text
        self._show()

    def message(self, text: str) -> None:  # "done <step> (1.2 s)": counted on the device's line
        self.done = min(self.done + 1, self.total)
        self._show()

    def progress(self, task: str, done: int, total: int | None) -> None:
        if total:
            self._show(f" {done / 2**20:.1f}/{total / 2**20:.1f} MiB")

    def warning(self, text: str) -> None:
        self.parent.warning(f"{self.host}: {text}")

    def record(self, kind: str, data: dict) -> None:
        if kind == "device":
            self.device = dict(data)


def deploy_fleet(run_path: str | os.PathLike, cfg: DeploySettings, events: Events = SILENT) -> FleetResult:
    """Deploy (and with cfg.bench, benchmark) on every device `cfg` names, cfg.jobs at a time; write fleet.json,
    fleet.md and fleet.png. A failed device is listed with its reason in the result (`failed`), not raised."""
    run, found = _check_before_connecting(run_path, cfg, events)
    events.status(f"bundle {cfg.precision}")
    bundle = make_bundle(run, cfg.precision, max_images=cfg.max_images)
    jobs = min(cfg.jobs, len(found))
    events.message(f"bundle {cfg.precision} {'unchanged' if bundle.reused else 'written'}, {bundle.short_hash}: "
                   f"to {len(found)} devices, {jobs} at a time")
    events.status(f"deploying to {len(found)} devices")
    outcomes = _deploy_all(run, cfg, found, bundle, jobs, events)
    hosts = [outcomes[d][0] for d in found]
    rows = [row for d in found for row in outcomes[d][1]]
    result = FleetResult(run=str(run.path), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), precision=cfg.precision,
                         backend=cfg.backend, bundle_sha256=bundle.sha256, jobs=jobs, hosts=hosts, rows=rows)
    _write_fleet(run, result, events)
    return result


def _check_before_connecting(run_path: str | os.PathLike, cfg: DeploySettings,
                             events: Events) -> tuple[RunDir, list[Destination]]:
    """The run and the devices to deploy to, once what would fail on every device alike has been checked."""
    found = destinations(cfg, events)
    run = RunDir(run_path)
    model_files(run, cfg.precision)  # a run that cannot be bundled fails before any connection
    for dest in found:  # no ssh client, a bad port or key file: one error now, not one per device
        SSHTransport(dest.target, cfg.ssh_options, port=dest.port, identity=cfg.identity)
    record_settings(run.path, "deploy", resolved(cfg, found))
    return run, found


class _DeviceClaims:
    """Which host writes which devices/<slug>: two names for one account and device would overwrite each
    other's results, so the second is refused."""

    def __init__(self):
        self._claimed: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim(self, host: str, slug: str) -> None:
        with self._lock:
            other = self._claimed.setdefault(slug, host)
        if other != host:
            raise DeployError(f"{host}: is the same account and device as {other} (both write devices/{slug})",
                              "list each device once")


def _deploy_all(run: RunDir, cfg: DeploySettings, found: list[Destination], bundle: Bundle, jobs: int,
                events: Events) -> dict[Destination, tuple[FleetHost, list[FleetRow]]]:
    """Each device in a thread, `jobs` at a time; its outcome (failed or not) and its rows, by device."""
    claims = _DeviceClaims()
    stop = threading.Event()
    outcomes: dict[Destination, tuple[FleetHost, list[FleetRow]]] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="edgetl-deploy") as pool:
        futures = {pool.submit(_deploy_one, run, cfg, dest, bundle, claims, stop, events): dest for dest in found}
        try:
            for done, future in enumerate(as_completed(futures), 1):
                outcomes[futures[future]] = future.result()
                events.progress("devices", done, len(found))
        except BaseException:  # Ctrl-C: devices not started are not started; running ones stop at their next step
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return outcomes


def _deploy_one(run: RunDir, cfg: DeploySettings, dest: Destination, bundle: Bundle, claims: _DeviceClaims,
                stop: threading.Event, events: Events) -> tuple[FleetHost, list[FleetRow]]:
    """One device's deploy; its failure is its outcome, not an exception."""
    from edgetl.ship.fleet_report import failure_line

    started = time.time()
    host = dest.label
    mine = HostEvents(events, host, step_count(cfg, bundled=True))
    result: DeployResult | None = None
    error = hint = None
    try:
        result = deploy_to(run, cfg, dest, mine, bundle=bundle, claim=lambda slug: claims.claim(host, slug),
                           stop=stop)
    except EdgetlError as e:
        error, hint = e.message, e.hint
    except Exception as e:  # one device's surprise must not cost the others their results
        error = f"{type(e).__name__}: {first_line(e)}"
    finished = time.time()
    facts = mine.device.get("facts") or {}  # also for a device that failed after its check
    outcome = FleetHost(host=host, device_dir=mine.device.get("device_dir"),
                        board=facts.get("model") or facts.get("gpu") or facts.get("machine"),
                        power_mode=(facts.get("power_mode") or {}).get("name"), clocks=facts.get("clocks"),
                        started=started, finished=finished, error=error, hint=hint)
    events.record("fleet_host", {"host": host, "state": "failed" if error else "ok"})
    if error:
        events.message(failure_line(host, error))
    else:
        summary = f"benchmarked {ran(result.rows)}" if result.rows else \
            ("installed" if result.installed else "already installed")
        events.message(f"{host}: ok, {summary} ({finished - started:.1f} s)")
    return _with_rows(outcome, result) if result is not None else (outcome, [])


def _write_fleet(run: RunDir, result: FleetResult, events: Events) -> None:
    from edgetl.ship.fleet_report import fleet_markdown, plot_fleet
    from edgetl.io import write_text

    events.status("writing fleet.json, fleet.md, fleet.png")
    result.write(run.fleet_json)
    write_text(run.fleet_md, fleet_markdown(result))
    plot_fleet(result, run.fleet_png)


def _with_rows(host: FleetHost, result: DeployResult) -> tuple[FleetHost, list[FleetRow]]:
    rows = [FleetRow(host=host.host, backend=r["backend"], precision=r["precision"], batch_size=r["batch_size"],
                     device=r["device"], model_file=r["model_file"], latency_ms=r["latency_ms"],
                     throughput_ips=r["throughput_ips"], top1=r.get("top1"), top1_drop=r.get("top1_drop"))
            for r in result.rows]
    return host, rows


__all__ = ["FleetHost", "FleetResult", "FleetRow", "HostEvents", "deploy_fleet"]
