"""`edgetl deploy` against a real OpenSSH server on 127.0.0.1 (throwaway host and user keys, one sshd per module).

The "device" is this machine reached over ssh: the remote Python is this test's interpreter (it has numpy and
onnxruntime), the benchmark runs with the onnxruntime backend (no GPU needed), and every remote path lives in a
temp folder. Skipped with a reason where `sshd` is not installed (.ci/run installs openssh-server).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import DeployError
from edgetl.portable.rows import ROW_KEYS
from edgetl.ship.transport import SSHTransport, host_slug, remote_path, validate_host

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)
needs_sshd = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(sshd_factory):
    """One real sshd for the module (conftest.sshd_factory: throwaway host and user keys)."""
    return sshd_factory()


@pytest.fixture(scope="module")
def demo_run(exported_copy):
    """A private exported copy of the trained run (one per module: deploy never changes it)."""
    return exported_copy("digits")


def _local_top1(run: Path, bundle_dir: Path) -> float:
    """What onnxruntime gives here on the bundle's own preprocessed images."""
    import onnxruntime as ort

    x = np.load(bundle_dir / "data" / "inputs.npy")
    y = np.load(bundle_dir / "data" / "labels.npy")
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def _deploy(run, sshd, remote, host=None, **kw):
    from edgetl.ship.deploy import DeploySettings, deploy

    settings = dict(hosts=[host or sshd.host], ssh_options=sshd.options, remote_dir=str(remote), python=sys.executable,
                    backend="onnxruntime", batch_sizes=(1, 4), warmup=1, iterations=5, max_images=64)
    settings.update(kw)
    return deploy(run, DeploySettings(**settings))


# -- no server needed ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "-oProxyCommand=touch /tmp/x", "host;touch /tmp/pwned", "a b", "h$(id)",
                                 "h`id`", "h\nx", "h|x", "h'x"])
def test_bad_host_names_are_refused(bad):
    with pytest.raises(DeployError):
        validate_host(bad)


@pytest.mark.parametrize("good", ["nvidia@orin.local", "orin", "user@192.168.1.20", "user@[fe80::1%eth0]",
                                  "ssh://nvidia@orin:2222"])
def test_good_host_names_pass(good):
    assert validate_host(good) == good


def test_bad_options_fail_before_connecting(tmp_path):
    from edgetl.ship.deploy import DeploySettings
    from edgetl.errors import EdgetlError
    from edgetl.stage import load_settings

    # settings are checked when they are read, before anything connects; messages name the setting
    for kw, what in [({"device": "tpu"}, "'device'"), ({"backend": "tflite"}, "'backend'"),
                     ({"batch_sizes": (0,)}, "'batch_sizes.0'"), ({"iterations": 0}, "'iterations'"),
                     ({"warmup": -1}, "'warmup'"), ({"port": 70000}, "'port'")]:
        with pytest.raises(EdgetlError, match=what):
            load_settings(DeploySettings, None, {"hosts": ["nvidia@unreachable.invalid"], **kw})


def test_slugs_and_remote_paths():
    # two accounts on one device keep their results apart: RUN/devices/<user@host>/
    assert host_slug("nvidia@orin.local") == "nvidia@orin.local"
    assert host_slug("root@orin.local") != host_slug("nvidia@orin.local")
    assert host_slug("ssh://nvidia@orin:2222") == "nvidia@orin_2222"
    assert host_slug("orin", user="jetson") == "jetson@orin"  # an ssh-config alias: the login the device reported
    assert host_slug("nvidia@orin", user="ignored", port=2222) == "nvidia@orin_2222"
    assert host_slug("orin") == "orin"
    assert remote_path("~/edgetl") == "edgetl"
    assert remote_path("~") == "."
    assert remote_path("-rf") == "./-rf"
    assert remote_path("/opt/x") == "/opt/x"


# -- against a real sshd ------------------------------------------------------------------------------

@needs_sshd
@pytest.mark.ssh
def test_deploy_bench_and_fetch(sshd, demo_run, tmp_path):
    remote = tmp_path / "device"
    result = _deploy(demo_run, sshd, remote, bench=True)

    # what is on the "device": the bundle under <remote>/<run>/<hash>/, every file as in the manifest
    short_hash = result.bundle_sha256[:16]
    final = remote / "digits" / short_hash
    assert Path(result.remote_dir) == final and final.is_dir()
    bundle_path = demo_run / "bundles" / "fp32"
    assert not list((remote / "digits").glob(".*.partial"))
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["run"] == "digits" and manifest["precision"] == "fp32"
    import hashlib

    for rel, entry in manifest["files"].items():
        data = (final / rel).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert (final / "manifest.json").read_bytes() == (bundle_path / "manifest.json").read_bytes()
    assert result.installed and "model.onnx" in result.uploaded and "edgetl_device.py" in result.uploaded
    assert "portable/rows.py" in result.uploaded and "portable/engines.py" in result.uploaded

    # results fetched home, per account
    local = demo_run / "devices" / f"{getpass.getuser()}@127.0.0.1"
    assert demo_run / result.device_dir == local
    bench = json.loads((local / "bench.json").read_text())
    rows = bench["rows"]
    assert [r["batch_size"] for r in rows] == [1, 4]
    expected_top1 = _local_top1(demo_run, bundle_path)
    ref = manifest["reference"]["top1"]
    for r in rows:
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32" and r["device"] == "cpu"
        assert r["model_file"] == "model.onnx"
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] / (lat["mean"] / 1e3), rel=1e-3)  # rounded
        assert r["top1"] == pytest.approx(expected_top1, abs=1e-6)  # rows carry 6 decimals
        assert r["top1_drop"] == pytest.approx(ref - expected_top1, abs=2e-6)
    assert bench["system"]["python"] == ".".join(map(str, sys.version_info[:3]))
    facts = json.loads((local / "facts.json").read_text())
    assert facts["onnxruntime"] and facts["numpy"] and "tensorrt" in facts and "power_mode" in facts
    assert facts["user"] == getpass.getuser() and facts["free_bytes"] > 0
    assert all(tuple(r) == ROW_KEYS and r["where"] == "device" for r in rows)
    record = json.loads((local / "deploy.json").read_text())
    assert record == result.model_dump(mode="json")  # deploy.json is the result, key for key
    assert record["bundle_sha256"] == hashlib.sha256((bundle_path / "manifest.json").read_bytes()).hexdigest()
    assert record["remote_dir"] == str(final) and record["rows"] == rows
    assert (demo_run / "settings" / "deploy.yaml").is_file()

    # re-running is idempotent: the installed bundle verifies, nothing is sent again
    again = _deploy(demo_run, sshd, remote, bench=False)
    assert again.bundle_reused and again.bundle_sha256 == result.bundle_sha256
    assert again.uploaded == [] and again.resumed == [] and not again.installed

    # a file changed on the device is caught before anything runs
    target = final / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DeployError) as err:
        _deploy(demo_run, sshd, remote)
    assert "model.onnx" in err.value.message and "sha256" in err.value.message
    assert "force" in err.value.hint
    # --force replaces it
    fixed = _deploy(demo_run, sshd, remote, force=True)
    assert fixed.installed and "model.onnx" in fixed.uploaded
    assert hashlib.sha256(target.read_bytes()).hexdigest() == manifest["files"]["model.onnx"]["sha256"]


@needs_sshd
@pytest.mark.ssh
def test_interrupted_upload_resumes(sshd, demo_run, tmp_path):
    """A partial copy (as a broken connection leaves it) is appended to, not re-sent; nothing half-installed shows."""
    from edgetl.ship.bundle import make_bundle

    remote = tmp_path / "device"
    bundle = make_bundle(demo_run, "fp32", max_images=64)
    staging = remote / "digits" / f".{bundle.short_hash}.partial"
    staging.mkdir(parents=True)
    onnx_bytes = (bundle.path / "model.onnx").read_bytes()
    (staging / "model.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    shutil.copyfile(bundle.path / "card.json", staging / "card.json")
    (staging / "edgetl_device.py").write_text("garbage from an earlier, different bundle")
    assert not (remote / "digits" / bundle.short_hash).exists()

    result = _deploy(demo_run, sshd, remote)
    assert result.resumed == ["model.onnx"]
    assert "card.json" in result.skipped and "edgetl_device.py" in result.uploaded
    final = remote / "digits" / bundle.short_hash
    assert (final / "model.onnx").read_bytes() == onnx_bytes and not staging.exists()


@needs_sshd
@pytest.mark.ssh
def test_shell_metacharacters_do_no_harm(sshd, demo_run, tmp_path):
    """A run name and a remote dir full of shell syntax arrive as literal folder names; nothing is executed."""
    name = f"edgetl-pwned-{os.getpid()}"
    markers = [Path("/tmp") / name, Path.home() / name, tmp_path / name]
    evil_run = tmp_path / f"run;touch {name};$(touch {name})`touch {name}`"
    shutil.copytree(demo_run, evil_run, ignore=shutil.ignore_patterns("bundles", "devices"))
    remote = tmp_path / f"dev ice';touch /tmp/{name};'" / f"$(touch /tmp/{name})" / "-rf"
    result = _deploy(evil_run, sshd, remote)
    assert not any(m.exists() for m in markers)
    final = remote / evil_run.name / result.bundle_sha256[:16]
    assert (final / "manifest.json").is_file()
    with pytest.raises(DeployError):
        _deploy(evil_run, sshd, remote, host=f"{sshd.host};touch /tmp/{name}")
    assert not any(m.exists() for m in markers)


@needs_sshd
@pytest.mark.ssh
def test_unreachable_host_is_one_clear_line(sshd, demo_run, tmp_path):
    closed = _free_port()
    options = [o if o != str(sshd.port) else str(closed) for o in sshd.options]
    cmd = [sys.executable, "-m", "edgetl.cli", "deploy", str(demo_run), "--host", sshd.host,
           "--remote-dir", str(tmp_path / "x"), "--backend", "onnxruntime"]
    for o in options:
        cmd.append(f"--ssh-option={o}")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "connection refused" in res.stderr and "127.0.0.1" in res.stderr


@needs_sshd
@pytest.mark.ssh
def test_auth_failure_and_unknown_host_key(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    options = ["-F", "/dev/null", "-p", str(sshd.port), "-i", str(other), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={sshd.root / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null"]
    with pytest.raises(DeployError, match="authentication failed"):
        with SSHTransport(sshd.host, options):
            pass
    # strict host-key checking stays on: an unknown host key is refused, not accepted
    (tmp_path / "empty_known_hosts").write_text("")
    options = ["-F", "/dev/null", "-p", str(sshd.port), "-i", str(sshd.root / "user_key"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={tmp_path / 'empty_known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null"]
    with pytest.raises(DeployError, match="host key verification failed"):
        with SSHTransport(sshd.host, options):
            pass
    assert (tmp_path / "empty_known_hosts").read_text() == ""


@needs_sshd
@pytest.mark.ssh
def test_missing_remote_python_is_named(sshd, demo_run, tmp_path):
    with pytest.raises(DeployError, match="no Python interpreter"):
        _deploy(demo_run, sshd, tmp_path / "d", python="/nonexistent/python3")


@needs_sshd
@pytest.mark.ssh
def test_cli_deploy_with_port_and_identity(sshd, demo_run, tmp_path):
    """--port and --identity instead of --ssh-option pairs; host keys still checked (only known_hosts is given)."""
    from typer.testing import CliRunner

    from edgetl.cli import app

    known = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={sshd.root / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null"]
    args = ["deploy", str(demo_run), "--host", sshd.host, "--port", str(sshd.port), "--identity",
            str(sshd.root / "user_key"), "--remote-dir", str(tmp_path / "d"), "--python", sys.executable,
            "--backend", "onnxruntime", "--bench", "--batch-size", "2", "--iterations", "3", "--warmup", "1",
            "--max-images", "64"] + [f"--ssh-option={o}" for o in known]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "top-1" in res.output and "benchmarked model.onnx on cpu" in res.output
    # results per account and port: another sshd port of one address may be another device behind a NAT
    local = demo_run / "devices" / f"{getpass.getuser()}@127.0.0.1_{sshd.port}"
    rows = json.loads((local / "bench.json").read_text())["rows"]
    assert any(r["batch_size"] == 2 and r["backend"] == "onnxruntime" for r in rows)
    # a wrong port is named with the option that fixes it
    res = CliRunner().invoke(app, args[:5] + [str(_free_port())] + args[6:])
    err = res.exception
    assert isinstance(err, DeployError) and "connection refused" in err.message and "port" in err.hint


SECOND_ACCOUNT = "edgetl-device"  # made by .ci/run, with ~/venv holding only numpy and onnxruntime


def _second_account():
    import pwd

    try:
        home = Path(pwd.getpwnam(SECOND_ACCOUNT).pw_dir)
    except KeyError:
        return None
    python = home / "venv" / "bin" / "python"
    return (home, python) if os.geteuid() == 0 and python.exists() else None


@needs_sshd
@pytest.mark.ssh
@pytest.mark.skipif(_second_account() is None, reason=f"needs root and the account {SECOND_ACCOUNT} with ~/venv "
                                                       "(numpy, onnxruntime), as .ci/run makes them")
def test_deploy_to_a_second_account(sshd, demo_run, tmp_path):
    """As a new user deploys to a device: another account (its own home and a venv with only numpy and
    onnxruntime, no edgetl), reached with --port and --identity through the real console script; results
    land under devices/<user@host_port>/, apart from this account's."""
    import pwd

    home, python = _second_account()
    user = pwd.getpwnam(SECOND_ACCOUNT)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((sshd.root / "user_key.pub").read_text())
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, user.pw_uid, user.pw_gid)
    remote = f"edgetl-test-{os.getpid()}"
    known = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={sshd.root / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null"]
    cli = shutil.which("edgetl", path=str(Path(sys.executable).parent)) or shutil.which("edgetl")
    cmd = [cli, "deploy", str(demo_run), "--host", f"{SECOND_ACCOUNT}@127.0.0.1", "--port", str(sshd.port),
           "--identity", str(sshd.root / "user_key"), "--remote-dir", f"~/{remote}", "--python", str(python),
           "--backend", "onnxruntime", "--bench", "--batch-size", "2", "--iterations", "3", "--warmup", "1",
           "--max-images", "64"] + [f"--ssh-option={o}" for o in known]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "benchmarked model.onnx on cpu" in res.stdout and "Traceback" not in res.stderr
        assert (home / remote).is_dir() and (home / remote).stat().st_uid == user.pw_uid  # the device's own files
        local = demo_run / "devices" / f"{SECOND_ACCOUNT}@127.0.0.1_{sshd.port}"
        rows = json.loads((local / "bench.json").read_text())["rows"]
        assert any(r["batch_size"] == 2 and r["backend"] == "onnxruntime" and r["top1"] is not None for r in rows)
    finally:
        shutil.rmtree(home / remote, ignore_errors=True)


@needs_sshd
@pytest.mark.ssh
def test_device_that_cannot_run_the_backend_fails_before_bundling(sshd, exported_copy, tmp_path):
    """No TensorRT on the "device" (this machine): the default --backend tensorrt stops at the check, with the
    option that fixes it, before a bundle is made or a byte is sent."""
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    run = exported_copy("no-trt")
    remote = tmp_path / "d"
    with pytest.raises(DeployError) as err:
        _deploy(run, sshd, remote, backend="tensorrt", bench=True)
    assert "TensorRT is not installed" in err.value.message and "backend to onnxruntime" in err.value.hint
    assert not remote.exists() and not (run / "bundles").exists()


@needs_sshd
@pytest.mark.ssh
def test_device_python_without_numpy_is_named_before_upload(sshd, demo_run, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    remote = tmp_path / "d"
    with pytest.raises(DeployError) as err:
        _deploy(demo_run, sshd, remote, python=str(venv / "bin" / "python"), bench=True)
    assert "numpy is not installed" in err.value.message and "set python" in err.value.hint
    assert not remote.exists()


@needs_sshd
@pytest.mark.ssh
def test_too_little_disk_stops_before_upload(sshd, demo_run, tmp_path, monkeypatch):
    import edgetl.ship.deploy

    monkeypatch.setattr(edgetl.ship.deploy, "SPACE_MARGIN", 1 << 62)  # more than any disk has free
    remote = tmp_path / "d"
    with pytest.raises(DeployError) as err:
        _deploy(demo_run, sshd, remote)
    assert "MiB free" in err.value.message and "remote_dir" in err.value.hint
    assert not list(remote.rglob("model.onnx"))


@needs_sshd
@pytest.mark.ssh
def test_bad_python_on_a_device_with_a_verified_bundle(sshd, demo_run, tmp_path):
    """issue 14: a bad --python must not claim the (good) bundle changed, nor suggest --force."""
    remote = tmp_path / "d"
    first = _deploy(demo_run, sshd, remote)
    assert first.installed
    for python in ("/nonexistent/python3", "/bin/false"):
        with pytest.raises(DeployError) as err:
            _deploy(demo_run, sshd, remote, python=python)
        text = f"{err.value.message} {err.value.hint or ''}"
        assert "force" not in text and "changed" not in text, text
    assert "no Python interpreter" in str(err.value.message) or "facts" in str(err.value.message)
    assert _deploy(demo_run, sshd, remote).skipped  # the bundle there still verifies


@needs_sshd
@pytest.mark.ssh
@pytest.mark.slow
def test_int8_on_a_device_without_tensorrt_says_which_file_ran(sshd, exported_copy, tmp_path):
    from typer.testing import CliRunner

    from edgetl.cli import app
    from edgetl.quantize import QuantizeSettings, quantize

    run = exported_copy("int8")
    quantize(run, QuantizeSettings(precision="int8", target="both", calib_size=32, max_drop=100.0))
    args = ["deploy", str(run), "--host", sshd.host, "--remote-dir", str(tmp_path / "d"), "--python", sys.executable,
            "--precision", "int8", "--backend", "onnxruntime", "--device", "cpu", "--bench", "--batch-size", "1",
            "--iterations", "2", "--warmup", "0", "--max-images", "32"] + [f"--ssh-option={o}" for o in sshd.options]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "benchmarked model.int8.cpu.onnx on cpu" in res.output
    rows = json.loads((run / "devices" / f"{getpass.getuser()}@127.0.0.1" / "bench.json").read_text())["rows"]
    assert [r["model_file"] for r in rows] == ["model.int8.cpu.onnx"]


@needs_sshd
@pytest.mark.ssh
def test_cli_deploy(sshd, demo_run, tmp_path):
    from typer.testing import CliRunner

    from edgetl.cli import app

    args = ["deploy", str(demo_run), "--host", sshd.host, "--remote-dir", str(tmp_path / "d"), "--python",
            sys.executable, "--backend", "onnxruntime", "--bench", "--batch-size", "2", "--iterations", "3",
            "--warmup", "1", "--max-images", "64"] + [f"--ssh-option={o}" for o in sshd.options]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "top-1" in res.output
    rows = json.loads((demo_run / "devices" / f"{getpass.getuser()}@127.0.0.1" / "bench.json").read_text())["rows"]
    assert any(r["batch_size"] == 2 and r["backend"] == "onnxruntime" for r in rows)
