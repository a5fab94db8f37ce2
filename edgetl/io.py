"""Atomic file writes: a stage never leaves a half-written artifact behind.

Temporary files and folders carry a recognisable name, `.<tag>.edgetl-<host>-<pid>-<time>-<random>.tmp`,
so that a later run can remove the ones a killed process (SIGKILL, power loss) left behind, and
nothing else: a name that does not match, another machine's, or a live process's is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from edgetl.portable.hashing import sha256_file  # noqa: F401 (one copy, shared with the device side)

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\.(?P<tag>.+)\.edgetl-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<ms>\d+)-[A-Za-z0-9_]+\.tmp$")
_swept: set[str] = set()


def _temp_prefix(tag: str) -> str:
    return f".{tag}.edgetl-{_HOST}-{os.getpid()}-{int(time.time() * 1000)}-"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds.

    The file gets the mode a plain open() would give it (0666 less the umask), not mkstemp's 0600,
    so that a server running as another user (Triton, a web server) can read the artifact.
    """
    target = Path(target)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_errors(target):
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# The errors of a folder that cannot take a file (full disk, quota, read-only mount, permissions): the user's to
# fix, so one line naming the folder, not a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@contextlib.contextmanager
def disk_errors(target: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write of `target` (DISK_ERRNOS) into a RunDirError naming its folder and the cause."""
    from edgetl.errors import RunDirError

    try:
        yield
    except OSError as e:
        parent = Path(target).parent
        # A permission error may be a source the block could not read (its own file name); the others are writes.
        theirs = e.errno in (errno.EACCES, errno.EPERM) and e.filename and \
            Path(os.fsdecode(e.filename)).parent not in (parent, parent.parent)
        if e.errno not in DISK_ERRNOS or theirs:
            raise
        raise RunDirError(f"{parent}: cannot write {Path(target).name} ({e.strerror or e})", _DISK_HINT) from None
    except Exception as e:
        # Writers in native code say it in words: torch.save ("file write failed"), safetensors ("os error 28").
        text = str(e).lower()
        if not any(words in text for words in _DISK_WORDS):
            raise
        from edgetl.errors import first_line

        raise RunDirError(f"{Path(target).parent}: cannot write {Path(target).name} ({first_line(e)})",
                          _DISK_HINT) from None


_DISK_HINT = "free space on that disk, or make the folder writable, then run again"
_DISK_WORDS = ("no space left", "os error 28", "read-only file system", "os error 30", "disk quota",
               "file write failed")


def make_tempdir(parent: str | os.PathLike, tag: str) -> Path:
    """A new private (0700) working folder inside `parent`, so renames out of it stay on one file
    system; the caller removes it. One left by a killed process is removed by the next call here."""
    parent = Path(parent)
    sweep_stale_temps(parent)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(tag), suffix=".tmp", dir=parent))


@contextlib.contextmanager
def private_tempdir(parent: str | os.PathLike, tag: str) -> Iterator[Path]:
    """make_tempdir(), removed when the block ends."""
    path = make_tempdir(parent, tag)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove edgetl temporaries in `folder` whose process is gone; returns what was removed.
    Each folder is swept once per process: the check costs a directory listing."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or m["host"] != _HOST or not _process_gone(int(m["pid"]), int(m["ms"]) / 1000):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another process swept it first, or it is not ours to remove
    return removed


def _process_gone(pid: int, created: float) -> bool:
    """True when no process `pid` runs, or the one that does started after `created` (the pid was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's): keep
    started = _process_start_time(pid)
    return started is not None and started > created + 1.0


def _process_start_time(pid: int) -> float | None:
    """Start time (seconds since the epoch) from /proc on Linux; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the "(comm)" field
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it to read it,
    which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual suspects in reports.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


