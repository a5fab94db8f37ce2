"""The system's OpenSSH client as a transport: the user's ~/.ssh/config, agent, ProxyJump and known_hosts apply.

Every call is an argument list (never a local shell). What runs on the remote side is one command line
built with shlex.quote, so no file, directory or run name can inject a command there. Files travel as
byte streams over `ssh HOST 'cat > PATH'` (and `cat PATH` back) rather than through scp/rsync: legacy
scp and rsync hand remote paths to the remote shell themselves, where the quoting is theirs, not ours;
a stream also lets an interrupted upload resume by appending (`cat >> PATH`) after a hash check.

Host-key checking is OpenSSH's own: we never pass StrictHostKeyChecking. BatchMode=yes means an
unknown host key or a password prompt fails at once with one clear line instead of hanging.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from edgetl.errors import DeployError
from edgetl.io import atomic_path

_BAD_HOST = re.compile(r"[\s\x00-\x1f\x7f;&|$`'\"<>(){}*?!\\]")
CHUNK = 1 << 20


def validate_host(host: str) -> str:
    """An ssh destination (user@host, an ~/.ssh/config alias, ssh://user@host:port), never an option or a shell word."""
    if not host:
        raise DeployError("host is empty", "give user@host or a Host alias from ~/.ssh/config")
    if host.startswith("-"):
        raise DeployError(f"host {host!r}: starts with '-', which ssh would read as an option")
    if _BAD_HOST.search(host):
        raise DeployError(f"host {host!r}: contains whitespace, control or shell characters",
                          "give user@host or a Host alias from ~/.ssh/config")
    return host


def host_slug(host: str, user: str | None = None, port: int | None = None) -> str:
    """A folder name for an account on a host: 'nvidia@orin.local' -> 'nvidia@orin.local', so two users of
    one device (or one host name on two ports) never share results. `user` (the login name the device
    reported) fills in a destination that names none, e.g. a ~/.ssh/config alias."""
    dest = host.split("://", 1)[-1]
    who, _, name = dest.rpartition("@")
    who = who or user or ""
    name = name + (f":{port}" if port else "")
    clean = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")  # noqa: E731
    slug = f"{clean(who)}@{clean(name)}" if clean(who) else clean(name)
    return slug or "host"


def display_name(host: str, port: int | None) -> str:
    """How edgetl names a destination: user@host, user@host:2222, user@[fe80::1]:2222."""
    if port is None:
        return host
    who, at, name = host.rpartition("@")
    return f"{who}{at}{f'[{name}]' if ':' in name else name}:{port}"


def remote_path(path: str) -> str:
    """A remote path as the remote shell should see it, before quoting. '~/x' means x under the login
    directory (where ssh commands start), since a quoted '~' would not expand."""
    if path in ("~", ""):
        return "."
    if path.startswith("~/"):
        path = path[2:] or "."
    if path.startswith("-"):
        path = "./" + path  # never read as an option by mkdir/cat/rm
    return path


class SSHTransport:
    """One host. Use as a context manager: opens a multiplexed master connection (one handshake for all the
    commands of a deploy) and closes it at the end."""

    def __init__(self, host: str, ssh_options: Sequence[str] = (), connect_timeout: int = 15, multiplex: bool = True,
                 ssh: str = "ssh", port: int | None = None, identity: str | os.PathLike | None = None):
        self.host = validate_host(host)
        if port is not None and not 1 <= int(port) <= 65535:
            raise DeployError(f"port {port}: not a TCP port (1-65535)")
        if identity is not None:
            key = Path(identity).expanduser()
            if not key.is_file():
                raise DeployError(f"identity {identity}: no such key file", "give the private key, e.g. ~/.ssh/id_ed25519")
        # -p and -i are plain OpenSSH options: the user's config, agent and known_hosts still apply;
        # IdentitiesOnly keeps ssh from offering every agent key first (servers cut off after ~6 tries).
        own = ([] if port is None else ["-p", str(int(port))]) + \
            ([] if identity is None else ["-i", str(Path(identity).expanduser()), "-o", "IdentitiesOnly=yes"])
        self.port = port
        self.name = display_name(self.host, port)  # how messages name it: with the port, one host may be many devices
        self.ssh_options = own + [str(o) for o in ssh_options]
        self.connect_timeout = connect_timeout
        self.multiplex = multiplex and os.name == "posix"
        self.ssh = shutil.which(ssh)
        if self.ssh is None:
            raise DeployError(f"no `{ssh}` client on this machine", "install OpenSSH (apt-get install openssh-client)")
        self._control_dir: str | None = None
        self.uploaded_bytes = 0

    # -- connection -------------------------------------------------------------------------------
    def _base(self) -> list[str]:
        # The user's options come first: for ssh the first value given for an option wins.
        argv = [self.ssh, *self.ssh_options, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self._control_dir:
            argv += ["-o", f"ControlPath={self._control_dir}/%C", "-o", "ControlMaster=no"]
        return argv

    def __enter__(self) -> "SSHTransport":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Connect once (this is where an unreachable host or a refused key shows up)."""
        if not self.multiplex:
            self.run(["true"])
            return
        self._control_dir = tempfile.mkdtemp(prefix="edgetl-ssh-")
        argv = [self.ssh, *self.ssh_options, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"ControlPath={self._control_dir}/%C", "-o", "ControlMaster=yes", "-o", "ControlPersist=600",
                "-N", "-f", "--", self.host]
        # The master forks into the background: its stderr goes to a file, since a pipe would be held open.
        with tempfile.TemporaryFile() as errors:
            try:
                res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                     timeout=self.connect_timeout + 30)
            except subprocess.TimeoutExpired:
                self.close()
                raise DeployError(f"{self.name}: ssh did not connect within {self.connect_timeout + 30} s") from None
            errors.seek(0)
            text = errors.read().decode(errors="replace")
        if res.returncode != 0:
            self.close()
            raise self._connection_error(text)

    def close(self) -> None:
        if self._control_dir is None:
            return
        try:
            subprocess.run([self.ssh, *self.ssh_options, "-o", f"ControlPath={self._control_dir}/%C", "-O", "exit",
                            "--", self.host], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass  # closing runs in `finally`: it must not replace the error that got us here; ControlPersist ends it
        finally:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def _by_hand(self) -> str:
        return f"ssh -p {self.port} {self.host}" if self.port else f"ssh {self.host}"

    def _connection_error(self, stderr: str) -> DeployError:
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Warning: Permanently")]
        last = lines[-1] if lines else "ssh exited with status 255"
        text = stderr.lower()
        if "connection refused" in text:
            return DeployError(f"cannot connect to {self.name}: connection refused",
                               "is sshd running there, and is the port right (host:port, or the setting port)?")
        if "could not resolve hostname" in text or "name or service not known" in text:
            return DeployError(f"cannot connect to {self.name}: unknown host name", "check the name, or add it to ~/.ssh/config")
        if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
            return DeployError(f"cannot connect to {self.name}: {last}", "is the device on and on this network?")
        if "host key verification failed" in text or "remote host identification has changed" in text:
            return DeployError(f"{self.name}: host key verification failed (unknown or changed host key)",
                               f"run `{self._by_hand()}` once by hand to check and accept its key")
        if "permission denied" in text or "too many authentication failures" in text:
            return DeployError(f"{self.name}: ssh authentication failed ({last})",
                               f"check that `{self._by_hand()} true` works without a password (key in ssh-agent, or the setting identity)")
        return DeployError(f"{self.name}: ssh failed: {last}")

    # -- commands ---------------------------------------------------------------------------------
    def command_line(self, argv: Sequence[str]) -> str:
        """The remote command line: every word quoted for the remote POSIX shell."""
        return shlex.join(str(a) for a in argv)

    def run(self, argv: Sequence[str], input: bytes | None = None, check: bool = True,
            timeout: float | None = None, what: str | None = None) -> subprocess.CompletedProcess:
        return self._run_line(self.command_line(argv), input, check, timeout, what or str(argv[0]))

    def _run_line(self, line: str, input: bytes | None, check: bool, timeout: float | None,
                  what: str) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run([*self._base(), "--", self.host, line], input=input, capture_output=True,
                                 stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{self.name}: `{what}` did not finish within {timeout:.0f} s") from None
        if res.returncode == 255:
            raise self._connection_error(res.stderr.decode(errors="replace"))
        if check and res.returncode != 0:
            raise DeployError(f"{self.name}: {_remote_failure(what, res)}")
        return res

    def run_python(self, python: str, script: bytes, args: Sequence[str], check: bool = True,
                   timeout: float | None = None, what: str | None = None) -> subprocess.CompletedProcess:
        """`python - ARGS` with the script on stdin: the device-side code that runs is always this edgetl's own
        copy, never a file on the device that could have been changed."""
        res = self.run([python, "-", *args], input=script, check=False, timeout=timeout, what=what or f"{python} -")
        if res.returncode == 127:
            raise DeployError(f"{self.name}: no Python interpreter `{python}` there",
                              "install python3 (and numpy) on the device, or set python to /path/to/python3 there")
        if check and res.returncode != 0:
            raise DeployError(f"{self.name}: {_remote_failure(what or 'device script', res)}")
        return res

    # -- files ------------------------------------------------------------------------------------
    def upload(self, local: Path, remote: str, offset: int = 0, progress: Callable[[int], None] | None = None) -> int:
        """Stream `local` (from byte `offset`) into the remote file; appends when offset > 0. Returns bytes sent."""
        redirect = ">>" if offset else ">"
        line = f"cat {redirect} {shlex.quote(remote)}"
        proc = subprocess.Popen([*self._base(), "--", self.host, line], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sent = 0
        try:
            with open(local, "rb") as f:
                f.seek(offset)
                while block := f.read(CHUNK):
                    proc.stdin.write(block)
                    sent += len(block)
                    if progress:
                        progress(len(block))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the far end went away: the exit status below says why
        stderr = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
        if rc == 255:
            raise DeployError(f"{self.name}: connection lost while uploading {local.name} ({_last_line(stderr)})",
                              "re-run the same command: finished files are kept and the upload resumes")
        if rc != 0:
            raise DeployError(f"{self.name}: writing {remote} failed ({_last_line(stderr)})")
        self.uploaded_bytes += sent
        return sent

    def download(self, remote: str, local: Path) -> Path:
        """The remote file's bytes into `local`, written atomically."""
        res = self.run(["cat", "--", remote], what=f"cat {remote}")
        with atomic_path(local) as tmp:
            tmp.write_bytes(res.stdout)
        return local


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _remote_failure(what: str, res: subprocess.CompletedProcess) -> str:
    stderr = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else str(res.stderr)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    device = [line for line in lines if line.startswith("edgetl-device: error:")]
    if device:
        return device[-1].removeprefix("edgetl-device: error: ")
    return f"`{what}` failed with exit status {res.returncode}: {lines[-1] if lines else 'no message'}"


__all__ = ["SSHTransport", "display_name", "host_slug", "remote_path", "validate_host"]
