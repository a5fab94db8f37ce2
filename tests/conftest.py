"""Shared fixtures: small real data (scikit-learn digits) and a tiny trained run, built once per session.

Fixtures that return a shared run directory must not be written to: copy it first (`run_copy`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgetl.demo.data import write_demo_data
from edgetl.finetune import FinetuneSettings, finetune
from edgetl.stage import Events

_TRAINED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """source/{train,val}/0..4 (~64 train + 16 val per class) and target/{train,val}/5..9 (10 shots)."""
    root = tmp_path_factory.mktemp("digits")
    return write_demo_data(root, size=32, shots=10, per_class_limit=80)


def tiny_config(data: Path, model: str = "resnet18", **overrides) -> FinetuneSettings:
    """A few-second CPU run: 32 px, no hub download, no worker processes."""
    settings = dict(data=str(data), model=model, pretrained=False, img_size=32, crop_pct=1.0,
                    epochs=5, batch_size=16, lr=5e-3, augment="crop", workers=0, warmup_epochs=0.5)
    settings.update(overrides)
    return FinetuneSettings(**settings)


class Recorder(Events):
    """Events that keep the messages and warnings, and call `on_epoch(row)` after each finished epoch (a test
    raises there to interrupt a run at a known point)."""

    def __init__(self, on_epoch=None):
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.on_epoch = on_epoch

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def record(self, kind: str, data: dict) -> None:
        if kind == "epoch" and self.on_epoch is not None:
            self.on_epoch(data)


@pytest.fixture(scope="session")
def train_run(tmp_path_factory, digits):
    """Factory: train_run(model) -> a finished run dir on the digits source task, cached per model."""

    def make(model: str = "resnet18", epochs: int = 5) -> Path:
        key = f"{model}-{epochs}"
        if key not in _TRAINED:
            out = tmp_path_factory.mktemp(f"run-{model}")
            finetune(out, tiny_config(digits["source"], model=model, epochs=epochs), overwrite=True)
            _TRAINED[key] = out
        return _TRAINED[key]

    return make


@pytest.fixture(scope="session")
def trained_run(train_run) -> Path:
    """resnet18 trained 5 epochs on digits 0-4 (val top-1 is well above chance). Read-only: see run_copy."""
    return train_run("resnet18")


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private, writable copy of `trained_run`."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


@pytest.fixture(scope="session")
def exported_copy(trained_run, tmp_path_factory):
    """Factory: exported_copy(name) -> a private, writable copy of `trained_run` with model.onnx exported
    (the export runs once per session; every call gets its own folder, named `name`)."""
    from edgetl.export.run import export

    master = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, master)
    export(master)

    def make(name: str = "run") -> Path:
        dst = tmp_path_factory.mktemp("exported-copy") / name
        shutil.copytree(master, dst)
        return dst

    return make


@pytest.fixture(scope="session")
def family_graphs(tmp_path_factory):
    """Factory: family_graphs(model) -> a random-init run (32 px, 4 classes) of a timm family with
    model.onnx, model.int8.onnx (TensorRT form) and model.fp16.onnx written by edgetl's own export and
    quantize, made once per session. Read-only: copy it before writing. Graph structure and NVIDIA's
    parser/builder need no trained weights."""
    from edgetl.demo.scaffold import export_and_quantize, make_run

    made: dict[str, Path] = {}

    def make(model: str) -> Path:
        if model not in made:
            run = make_run(tmp_path_factory.mktemp(f"family-{model}"), model, img_size=32, num_classes=4,
                           images_per_class=4)
            export_and_quantize(run, "tensorrt", fp16=True)
            made[model] = run
        return made[model]

    return make


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory) -> Path:
    """The image-check cache of every test (and of the CLI subprocesses they start) in a session folder, never
    the user's ~/.cache: a test's verdicts must not leak into a real run, nor a real run's into a test."""
    import os

    folder = tmp_path_factory.mktemp("edgetl-cache")
    before = os.environ.get("EDGETL_CACHE_DIR")
    os.environ["EDGETL_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("EDGETL_CACHE_DIR", None)
    else:
        os.environ["EDGETL_CACHE_DIR"] = before


def pytest_configure(config):
    """A suite started from a background job (`nohup pytest &`, a scheduler, some CI runners) inherits SIGINT
    ignored, and an ignored signal stays ignored in every child it starts: the tests that press Ctrl-C on an
    edgetl process would then see it run on and exit 0. Python's own handler here lets the children start
    with the default disposition, as they would from a terminal."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fake_cudart_lib(tmp_path_factory):
    """Factory: fake_cudart_lib(mode) -> a stand-in libcudart.so (tests/fake_cudart.c) compiled for one kind
    of machine: "gpu" (an 'Orin (fake)', sm 8.7), "no-driver", "no-device", "zero", "no-symbol". Skips
    without a C compiler."""
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    folder = tmp_path_factory.mktemp("fake-cudart")
    source = Path(__file__).with_name("fake_cudart.c")
    flags = {"gpu": [], "no-driver": ["-DMODE_NO_DRIVER"], "no-device": ["-DMODE_NO_DEVICE"],
             "zero": ["-DMODE_ZERO"], "no-symbol": ["-DMODE_NO_SYMBOL"]}

    def make(mode: str) -> Path:
        if cc is None:
            pytest.skip("needs a C compiler (cc) to build a stand-in libcudart")
        lib = folder / f"libcudart-{mode}.so"
        if not lib.exists():
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(source), *flags[mode]], check=True)
        return lib

    return make


@pytest.fixture
def fake_cudart(fake_cudart_lib, monkeypatch):
    """use(mode) -> this process (and the CLI processes it starts) sees the stand-in libcudart of `mode`, or,
    with a path, that file; the layer's per-process cache is emptied around the test."""
    from edgetl.portable import cuda

    monkeypatch.setattr(cuda, "_CACHED", {})

    def use(mode_or_path) -> Path:
        lib = Path(mode_or_path) if isinstance(mode_or_path, Path) else fake_cudart_lib(mode_or_path)
        monkeypatch.setenv(cuda.ENV_VAR, str(lib))
        return lib

    return use


# -- real OpenSSH servers on 127.0.0.1 (deploy and fleet tests) ------------------------------------------------
class SSHServer:
    """One sshd: `options` reach it with ssh (its port, the user key, its known_hosts), `host` is user@127.0.0.1;
    `ssh_options` are the same without the port, for destinations that name their own (user@127.0.0.1:PORT)."""

    def __init__(self, root: Path, port: int, ssh_options: list[str], host: str):
        self.root, self.port, self.ssh_options, self.host = root, port, ssh_options, host
        self.options = ssh_options[:2] + ["-p", str(port)] + ssh_options[2:]

    @property
    def destination(self) -> str:
        return f"{self.host}:{self.port}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd_factory(tmp_path_factory):
    """Factory: start(workdir=None) -> SSHServer, a real OpenSSH server on 127.0.0.1 on a port of its own, with
    throwaway keys shared by every server of the test module (one user key, one host key, one known_hosts), so
    one set of ssh options reaches them all. `workdir`: every command there starts in that folder (a
    ForceCommand), so two servers on this one machine act as two devices with their own relative paths.
    Skips with a reason where OpenSSH is missing or sshd will not start; every server stops with the module."""
    import getpass
    import os
    import shlex
    import subprocess
    import time

    sshd = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)
    if sshd is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    (root / "known_hosts").write_text("")
    host_pub = (root / "host_key.pub").read_text().split()
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    running: list = []

    def start(workdir: Path | None = None) -> SSHServer:
        port = free_port()
        here = root / f"port-{port}"
        here.mkdir()
        with open(root / "known_hosts", "a") as f:
            f.write(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        lines = [f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", f"PidFile {here / 'sshd.pid'}",
                 f"AuthorizedKeysFile {root / 'authorized_keys'} .ssh/authorized_keys", "PubkeyAuthentication yes",
                 "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
                 "StrictModes no", "UsePAM no", "MaxStartups 50", "MaxSessions 50", "LogLevel ERROR"]
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            lines.append(f'ForceCommand cd {shlex.quote(str(workdir))} && eval "$SSH_ORIGINAL_COMMAND"')
        (here / "sshd_config").write_text("\n".join(lines + [""]))
        log = open(here / "sshd.log", "wb")
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(here / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
        running.append((proc, log))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.skip(f"sshd would not start here: {(here / 'sshd.log').read_text().strip()[-300:]}")
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        options = ["-F", "/dev/null", "-i", str(root / "user_key"), "-o", "IdentitiesOnly=yes",
                   "-o", f"UserKnownHostsFile={root / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null"]
        return SSHServer(root, port, options, f"{getpass.getuser()}@127.0.0.1")

    yield start
    for proc, log in running:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
