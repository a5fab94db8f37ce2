"""`edgetl deploy` to a fleet: many --host (or --hosts FILE) in parallel, against two real OpenSSH servers on
127.0.0.1 (two ports, each its own "device": every command there starts in a folder of its own) and one closed
port. The device Python is this test's interpreter; the benchmark runs with the onnxruntime backend.
Skipped with a reason where `sshd` is not installed (conftest.sshd_factory)."""

from __future__ import annotations

import getpass
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgetl.ship.deploy import DeploySettings, destinations
from edgetl.ship.destinations import Destination, parse_destination, read_hosts_file
from edgetl.errors import DeployError, EdgetlError
from edgetl.stage import Events, load_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorded(Events):
    def __init__(self):
        self.warnings: list[str] = []
        self.messages: list[str] = []
        self.records: list[tuple[str, dict]] = []

    def warning(self, text):
        self.warnings.append(text)

    def message(self, text):
        self.messages.append(text)

    def record(self, kind, data):
        self.records.append((kind, dict(data)))


# -- no server needed ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, target, port", [
    ("nvidia@orin.local", "nvidia@orin.local", None),
    ("orin", "orin", None),
    ("nvidia@192.168.1.20:2222", "nvidia@192.168.1.20", 2222),
    ("ssh://nvidia@orin:2222", "nvidia@orin", 2222),
    ("nvidia@[fe80::1%eth0]:22", "nvidia@fe80::1%eth0", 22),
    ("nvidia@fe80::1", "nvidia@fe80::1", None),  # two colons: a bare IPv6 address, no port
])
def test_destinations(text, target, port):
    dest = parse_destination(text)
    assert dest == Destination(target, port)
    assert parse_destination(dest.label) == dest  # the label edgetl prints reads back as the same device
    assert parse_destination(text, default_port=2200).port == (port or 2200)  # the port setting fills in


@pytest.mark.parametrize("text, what", [("u@h:0", "port '0'"), ("u@h:99999", "port '99999'"), ("u@h:ssh", "port 'ssh'"),
                                        ("@h", "empty"), ("u@", "empty"), ("u@[::1]x", "brackets"),
                                        ("ssh://u@h/path", "not a destination"), ("-oProxyCommand=x", "starts with '-'")])
def test_bad_destinations(text, what):
    with pytest.raises(DeployError, match=what) as err:
        parse_destination(text)
    assert "--" not in err.value.message.replace(text, "")  # names the setting, not a flag


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# the lab\n\nnvidia@orin-1.local   # desk\n  nvidia@orin-2.local:2222\n\n"
                    "nvidia@orin-1.local\nnvidia@orin-1.local:22\n")
    assert read_hosts_file(path) == ["nvidia@orin-1.local", "nvidia@orin-2.local:2222", "nvidia@orin-1.local",
                                     "nvidia@orin-1.local:22"]
    events = Recorded()
    cfg = DeploySettings(hosts=["jetson@nano", "nvidia@orin-2.local:2222"], hosts_file=str(path))
    found = destinations(cfg, events)
    # the same user, host and port twice is one device (said once per repeat); another port is another device
    assert found == [Destination("jetson@nano", None), Destination("nvidia@orin-2.local", 2222),
                     Destination("nvidia@orin-1.local", None), Destination("nvidia@orin-1.local", 22)]
    assert len(events.warnings) == 2 and all("deployed once" in w for w in events.warnings)
    # the port setting applies to destinations that name none, so the repeat with :22 now merges too
    found = destinations(cfg.model_copy(update={"port": 22}), Recorded())
    assert [d.label for d in found] == ["jetson@nano:22", "nvidia@orin-2.local:2222", "nvidia@orin-1.local:22"]

    for text, what in [("a b\n", "line 1: 'a b' holds more than one word"), ("# x\nok\nbad;host\n", "line 3"),
                       ("# only a comment\n\n", "lists no destination"), ("u@h:70000\n", "line 1: host 'u@h:70000'")]:
        path.write_text(text)
        with pytest.raises(DeployError, match=what):
            read_hosts_file(path)
    with pytest.raises(DeployError, match="cannot read"):
        read_hosts_file(tmp_path / "missing")
    with pytest.raises(DeployError, match="no destination"):
        destinations(DeploySettings())


def test_settings_refuse_bad_values():
    for kw, what in [({"jobs": 0}, "'jobs'"), ({"hosts": "a"}, "'hosts'"), ({"batch_sizes": "1,0"}, "'batch_sizes.1'"),
                     ({"precision": "int4"}, "'precision'"), ({"hosts": ["a", "u@h:0"]}, "port '0'")]:
        with pytest.raises(EdgetlError, match=what):
            load_settings(DeploySettings, None, kw)
    assert load_settings(DeploySettings, None, {"batch_sizes": "2, 16"}).batch_sizes == [2, 16]


def test_deploy_takes_one_device(tmp_path):
    from edgetl.ship.deploy import deploy

    with pytest.raises(DeployError, match="2 devices given"):
        deploy(tmp_path, DeploySettings(hosts=["a", "b"]))


def test_fleet_table_names_power_mode_and_clocks_only_where_reported():
    from edgetl.ship.fleet_result import FleetHost, FleetResult, FleetRow
    from edgetl.ship.fleet_report import fleet_markdown, table

    lat = {"mean": 2.0, "p50": 1.9, "p90": 2.5, "p99": 3.25, "min": 1.5, "max": 4.0, "std": 0.3}

    def host(name, **kw):
        base = dict(host=name, device_dir=f"devices/{name}", board=None, power_mode=None, clocks=None, started=0.0,
                    finished=1.0, error=None, hint=None)
        return FleetHost(**{**base, **kw})

    row = dict(backend="tensorrt", precision="int8", batch_size=8, device="cuda", model_file="model.int8.plan",
               latency_ms=lat, throughput_ips=4000.0, top1=0.95, top1_drop=0.0125)
    result = FleetResult(run="runs/x", created="now", precision="int8", backend="tensorrt", bundle_sha256="ab" * 32,
                         jobs=2, hosts=[host("nvidia@orin", board="NVIDIA Jetson AGX Orin", power_mode="MAXN",
                                             clocks={"gpu_mhz": 1300.5, "emc_mhz": 3199.0}),
                                        host("nvidia@nano:2222", device_dir=None, error="cannot connect", hint="is it on?")],
                         rows=[FleetRow(host="nvidia@orin", **row)])
    columns, cells = table(result)
    assert columns[-2:] == ["power mode", "clocks"]
    assert cells == [["nvidia@orin", "NVIDIA Jetson AGX Orin", "tensorrt", "int8", "8", "cuda", "1.900", "3.250",
                      "4000.0", "0.9500", "+1.2", "MAXN", "gpu 1300.5 / emc 3199 MHz"]]
    text = fleet_markdown(result)
    assert "- nvidia@nano:2222: FAILED: cannot connect (hint: is it on?)" in text
    assert "1 of 2 devices ok, 1 failed" in text
    # devices that report neither (not a Jetson): no empty columns
    plain = result.model_copy(update={"hosts": [host("nvidia@orin")]})
    assert "power mode" not in table(plain)[0] and "clocks" not in table(plain)[0]


def test_deploy_enum_is_refused_by_the_cli(tmp_path):
    from edgetl.cli import _run

    for option, value in [("--backend", "tflite"), ("--precision", "bf16"), ("--device", "tpu")]:
        assert _run(["deploy", str(tmp_path), "--host", "a", option, value]) == 2


def test_deploy_config_file_and_cli_override(exported_copy, tmp_path, capsys):
    """A YAML value is used (precision fp16: the run has no fp16 model, so it stops there), an option given on
    the command line wins (precision fp32: it gets as far as connecting, to a closed port), and the settings
    as applied are written to RUN/settings/deploy.yaml."""
    from edgetl.cli import _run

    run = exported_copy("fleet-config")
    config = tmp_path / "deploy.yaml"
    closed = _free_port()
    config.write_text(yaml.safe_dump({"hosts": [f"nobody@127.0.0.1:{closed}"], "precision": "fp16",
                                      "backend": "onnxruntime", "ssh_options": ["-F", "/dev/null"], "jobs": 3}))
    assert _run(["deploy", str(run), "--config", str(config)]) == 1
    assert "model.fp16.onnx is missing" in capsys.readouterr().err
    assert _run(["deploy", str(run), "--config", str(config), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    assert "connection refused" in err and "Traceback" not in err
    recorded = yaml.safe_load((run / "settings" / "deploy.yaml").read_text())
    assert recorded["precision"] == "fp32" and recorded["backend"] == "onnxruntime" and recorded["jobs"] == 3
    assert recorded["hosts"] == [f"nobody@127.0.0.1:{closed}"]
    # no destination at all: a usage error (exit 2), as a missing option is
    assert _run(["deploy", str(run)]) == 2
    assert "Missing option '--host'" in capsys.readouterr().err


# -- against two real sshd -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def devices(sshd_factory, tmp_path_factory):
    """Two servers, each with its own working folder (its 'device'), and a closed port."""
    root = tmp_path_factory.mktemp("fleet-devices")
    servers = [sshd_factory(workdir=root / f"device-{i}") for i in (1, 2)]
    return servers, _free_port(), root


@pytest.fixture(scope="module")
def fleet_run(exported_copy):
    return exported_copy("fleet")


def _args(run, servers, *extra):
    return (["deploy", str(run), "--python", sys.executable, "--backend", "onnxruntime", "--remote-dir", "edgetl-fleet",
             "--max-images", "64", "--warmup", "1", "--iterations", "3"]
            + [f"--ssh-option={o}" for o in servers[0].ssh_options] + list(extra))


def _onnxruntime_top1(run: Path) -> float:
    import onnxruntime as ort

    bundle = run / "bundles" / "fp32" / "data"
    x, y = np.load(bundle / "inputs.npy"), np.load(bundle / "labels.npy")
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1) == y).mean())


@pytest.mark.ssh
def test_fleet_two_devices_and_a_closed_port(devices, fleet_run, capsys):
    from edgetl.cli import _run
    from edgetl.ship.fleet_result import FleetResult

    servers, closed, root = devices
    user = getpass.getuser()
    hosts = [servers[0].destination, f"{user}@127.0.0.1:{closed}", servers[1].destination]
    args = _args(fleet_run, servers, "--bench", "--batch-size", "1", "--batch-size", "2", "--jobs", "2",
                 *[x for h in hosts for x in ("--host", h)])
    code = _run(args)
    out, err = capsys.readouterr()
    assert code == 4, out + err  # FleetIncomplete: some devices failed, the others' results are written
    assert "Traceback" not in out + err

    # the closed port is one line, the others finished
    failed_lines = [line for line in out.splitlines() if f":{closed}" in line and "FAILED" in line]
    assert len(failed_lines) >= 1 and all("connection refused" in line for line in failed_lines)
    assert f"1 of 3 devices failed: {user}@127.0.0.1:{closed}" in err

    result = FleetResult.read(fleet_run / "fleet.json")
    assert [h.host for h in result.hosts] == hosts
    ok = [h for h in result.hosts if h.error is None]
    assert [h.host for h in ok] == [hosts[0], hosts[2]]
    (bad,) = result.failed
    assert "connection refused" in bad.error and bad.device_dir is None
    # both real devices ran at the same time (--jobs 2): their intervals overlap
    a, b = ok
    assert a.started < b.finished and b.started < a.finished

    # device x precision x batch: two devices, batch 1 and 2, each scored as onnxruntime scores here
    expected = _onnxruntime_top1(fleet_run)
    reference = json.loads((fleet_run / "bundles" / "fp32" / "manifest.json").read_text())["reference"]["top1"]
    assert sorted((r.host, r.batch_size) for r in result.rows) == sorted((h, bs) for h in (hosts[0], hosts[2])
                                                                         for bs in (1, 2))
    for r in result.rows:
        assert r.backend == "onnxruntime" and r.precision == "fp32" and r.device == "cpu"
        assert 0 < r.latency_ms["p50"] <= r.latency_ms["p99"]
        assert r.throughput_ips == pytest.approx(r.batch_size / (r.latency_ms["mean"] / 1e3), rel=1e-3)
        assert r.top1 == pytest.approx(expected, abs=1e-6)
        assert r.top1_drop == pytest.approx(reference - expected, abs=2e-6)

    # per device, as for one device; the two "devices" installed into their own folders
    for server, h in zip(servers, ok):
        local = fleet_run / "devices" / f"{user}@127.0.0.1_{server.port}"
        assert h.device_dir == f"devices/{local.name}"
        device_rows = json.loads((local / "bench.json").read_text())["rows"]
        assert sorted(r["batch_size"] for r in device_rows) == [1, 2]
        assert json.loads((local / "deploy.json").read_text())["rows"] == device_rows
        assert list((root / f"device-{servers.index(server) + 1}" / "edgetl-fleet" / "fleet").glob("*/manifest.json"))
    assert not (fleet_run / "devices" / f"{user}@127.0.0.1_{closed}").exists()

    md = (fleet_run / "fleet.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith(f"| {user}@127.0.0.1:")]
    assert len(table_lines) == 4 and all("onnxruntime" in line for line in table_lines)
    assert [line for line in md.splitlines() if f":{closed}" in line] == [
        f"- {user}@127.0.0.1:{closed}: FAILED: {bad.error} (hint: {bad.hint})"]
    png = (fleet_run / "fleet.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(fleet_run / "fleet.png").shape[1] >= 800  # drawn, two batch panels wide
    recorded = yaml.safe_load((fleet_run / "settings" / "deploy.yaml").read_text())
    assert recorded["hosts"] == hosts and recorded["jobs"] == 2 and recorded["bench"] is True


@pytest.mark.ssh
def test_fleet_jobs_1_from_a_hosts_file_runs_one_after_another(devices, fleet_run, tmp_path, capsys):
    from edgetl.cli import _run
    from edgetl.ship.fleet_result import FleetResult

    servers, _, _ = devices
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(f"# two devices, one listed twice\n{servers[0].destination}\n\n"
                          f"{servers[1].destination}   # second\n{servers[0].destination}\n")
    code = _run(_args(fleet_run, servers, "--hosts", str(hosts_file), "--jobs", "1"))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "deployed once" in out + err
    result = FleetResult.read(fleet_run / "fleet.json")
    assert [h.host for h in result.hosts] == [servers[0].destination, servers[1].destination]
    assert not result.failed and result.rows == [] and result.jobs == 1
    first, second = result.hosts
    assert first.finished <= second.started  # one at a time
    assert sum(f"{h.host}: ok" in out for h in result.hosts) == 2
    assert "not benchmarked" in (fleet_run / "fleet.md").read_text()


@pytest.mark.ssh
def test_two_names_for_one_device_fail_for_the_second(devices, fleet_run, capsys):
    """`root@127.0.0.1:PORT` and `127.0.0.1:PORT` (the login filled in by the device) would write one results
    folder: one of them deploys, the other fails naming it, and nothing is written twice."""
    from edgetl.cli import _run
    from edgetl.ship.fleet_result import FleetResult

    servers, _, _ = devices
    named, bare = servers[0].destination, f"127.0.0.1:{servers[0].port}"
    assert _run(_args(fleet_run, servers, "--host", named, "--host", bare, "--jobs", "2")) == 4
    capsys.readouterr()
    result = FleetResult.read(fleet_run / "fleet.json")
    (bad,) = result.failed
    (good,) = [h for h in result.hosts if h.error is None]
    assert {bad.host, good.host} == {named, bare}
    assert f"the same account and device as {good.host}" in bad.error
    assert good.device_dir == f"devices/{getpass.getuser()}@127.0.0.1_{servers[0].port}"
