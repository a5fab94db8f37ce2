"""The run directory: the spine every stage reads from and writes to. Names live here only."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from edgetl.errors import RunDirError
from edgetl.portable.forms import form_for, is_precision


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # finetune
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def train_log(self) -> Path:
        return self.path / "train_log.csv"

    @property
    def curves_png(self) -> Path:
        return self.path / "curves.png"

    @property
    def confusion_png(self) -> Path:
        return self.path / "confusion.png"

    @property
    def checkpoint(self) -> Path:
        """Resume state of the last finished epoch (model, optimizer, scheduler, RNG)."""
        return self.path / "last_checkpoint.pt"

    @property
    def baseline_scratch(self) -> Path:
        """The from-scratch twin that `--baseline scratch` trains next to the transfer run."""
        return self.path / "baseline-scratch"

    @property
    def splits(self) -> Path:
        """The exact train/val file lists, so later stages score the same validation images."""
        return self.path / "splits.json"

    @property
    def bad_images(self) -> Path:
        """Images the run left out, found by the up-front check or during training (edgetl.data.skipped)."""
        return self.path / "bad_images.json"

    # export / quantize
    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def export_report(self) -> Path:
        return self.path / "export_report.json"

    def onnx_for(self, precision: str, target: str = "tensorrt") -> Path:
        """model.onnx (fp32), model.fp16.onnx, model.int8.onnx (TensorRT Q/DQ), model.int8.cpu.onnx."""
        if not is_precision(precision):  # no such graph; the caller's require() names the missing file
            return self.path / f"model.{precision}.onnx"
        return self.path / form_for(precision, target).file

    @property
    def quant_report(self) -> Path:
        return self.path / "quant_report.json"

    @property
    def calib_cache_dir(self) -> Path:
        return self.path / "calib_cache"

    # build / bench / deploy
    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"

    @property
    def bench_json(self) -> Path:
        return self.path / "bench.json"

    @property
    def bench_md(self) -> Path:
        return self.path / "bench.md"

    @property
    def bench_png(self) -> Path:
        return self.path / "bench.png"

    @property
    def shift_json(self) -> Path:
        """The last `edgetl shift` check (shift.png its figure; shift_reference.npz its cached train side)."""
        return self.path / "shift.json"

    @property
    def shift_png(self) -> Path:
        return self.path / "shift.png"

    @property
    def shift_reference(self) -> Path:
        return self.path / "shift_reference.npz"

    @property
    def devices_dir(self) -> Path:
        return self.path / "devices"

    @property
    def fleet_json(self) -> Path:
        """A fleet deploy's table (device x precision x batch), fleet.md its report, fleet.png its figure."""
        return self.path / "fleet.json"

    @property
    def fleet_md(self) -> Path:
        return self.path / "fleet.md"

    @property
    def fleet_png(self) -> Path:
        return self.path / "fleet.png"

    @property
    def bundles_dir(self) -> Path:
        return self.path / "bundles"

    @property
    def triton_dir(self) -> Path:
        return self.path / "triton"

    @property
    def settings_dir(self) -> Path:
        """RUN/settings/<stage>.yaml: each stage's resolved settings (finetune's stay in config.yaml)."""
        return self.path / "settings"

    @property
    def lock(self) -> Path:
        """Held (flock) by the edgetl command that writes this run, removed when it ends: see lock_run."""
        return self.path / ".edgetl.lock"

    def settings_file(self, stage: str) -> Path:
        return self.settings_dir / f"{stage}.yaml"

    def require(self, *paths: Path, hint: str) -> None:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory", "give the folder that `edgetl finetune --out` wrote")
        for p in paths:
            if not p.exists():
                raise RunDirError(f"{self.path}: {p.name} is missing", hint)


# --- replacing a run (finetune --overwrite) --------------------------------------------------------------
# Families of files edgetl writes at the top of a run besides RunDir's named ones: precision-baked graphs and
# their external data, and the temporary names of atomic writes (io.atomic_path, export's private folder).
_EDGETL_PATTERNS = ("model*.onnx", "model*.onnx.data", ".*.tmp", ".export-*", ".train_log.json", ".edgetl-*")


def edgetl_names(run: RunDir) -> set[str]:
    """Every top-level name RunDir defines (its properties are the only place names live)."""
    names = set()
    for attr, value in vars(RunDir).items():
        if isinstance(value, property):
            path = getattr(run, attr)
            if isinstance(path, Path) and path.parent == run.path:
                names.add(path.name)
    return names


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """Top-level entries of `path` that edgetl does not write: a reason never to delete the folder."""
    import fnmatch

    run = RunDir(path)
    known = edgetl_names(run)
    return sorted(p.name for p in run.path.iterdir()
                  if p.name not in known and not any(fnmatch.fnmatchcase(p.name, pat) for pat in _EDGETL_PATTERNS))


def is_edgetl_run(path: str | os.PathLike) -> bool:
    """A folder `edgetl finetune` wrote: its config.yaml holds finetune settings, and its weights (once an epoch
    finished) carry an edgetl model card."""
    import yaml

    from edgetl.card import ModelCard

    run = RunDir(path)
    try:
        settings = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(settings, dict) or not {"data", "out", "model"} <= set(settings):
        return False
    if run.weights.exists():
        try:
            ModelCard.from_safetensors(run.weights)
        except Exception:  # any unreadable or card-less file: not ours to delete
            return False
    elif not run.splits.exists():
        return False
    return True


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace a folder unless edgetl wrote it and everything in it."""
    run = RunDir(path)
    hint = "choose another --out, or move the folder away first"
    if not is_edgetl_run(run.path):
        raise RunDirError(f"{run.path}: exists and is not an edgetl run (no finetune config.yaml and model card), "
                          "so --overwrite will not delete it", hint)
    foreign = foreign_entries(run.path)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"{run.path}: holds files edgetl did not write ({listed}), so --overwrite will not delete it",
                          "move them out of the run folder, or choose another --out")


def check_out_and_data(out: str | os.PathLike, data: str | os.PathLike) -> None:
    """--out must be a folder apart from the data set: a run inside DATA becomes part of the data, and DATA
    inside (or equal to) a run would be replaced with it."""
    out_path, data_path = Path(out), Path(data)
    if out_path.exists() and not out_path.is_dir():
        raise RunDirError(f"run directory {out_path}: is a file", "give the run a folder of its own, e.g. runs/NAME")
    o, d = out_path.resolve(), data_path.resolve()
    if o == d:
        raise RunDirError(f"run directory {out_path}: is the data set itself", "write the run elsewhere, e.g. runs/NAME")
    if d in o.parents:
        raise RunDirError(f"run directory {out_path}: is inside the data set {data_path}; the run's files would become data",
                          "write the run elsewhere, e.g. runs/NAME")
    if o in d.parents:
        raise RunDirError(f"run directory {out_path}: holds the data set {data_path}", "write the run elsewhere, e.g. runs/NAME")


def pending_dir(target: str | os.PathLike) -> Path:
    """Where `finetune --overwrite` trains before swapping in: a hidden sibling of the run, on the same file
    system (so the swap is a rename), with a fixed name so that --resume finds an interrupted one."""
    target = Path(target).resolve()
    return target.with_name(f".{target.name}.edgetl-next")


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap a finished run into place with two renames; the old run is deleted only once the new one is there."""
    import shutil

    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.edgetl-old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- one writer per run -----------------------------------------------------------------------------------
@contextlib.contextmanager
def lock_run(path: str | os.PathLike, command: str, create: bool = False) -> Iterator[None]:
    """Hold RUN/.edgetl.lock (an exclusive flock) while `command` writes the run, so two edgetl commands that
    write one run (two `finetune --overwrite`, two `quantize`, `export` during `quantize`) never interleave: the
    second is refused at once, naming the holder. The kernel drops the lock when the holder dies, however it
    dies; the file itself is removed on the way out. A run folder that does not exist is left to the stage to
    refuse, or with `create` (finetune) created and, if nothing else was written into it, removed again. Where
    flock does not exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    run = RunDir(path)
    created = not run.path.exists()
    if not run.path.is_dir() and not create:
        yield
        return
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(run.lock, command, fcntl)
    except OSError as e:
        # Also the check that the run can be written at all, before any long work (bench measures for minutes).
        raise RunDirError(f"{run.path}: cannot write in the run folder ({e.strerror or e})",
                          "make the folder writable (or free space on its disk), then run again") from None
    try:
        yield
    finally:
        try:
            if os.path.samestat(os.fstat(fd), os.stat(run.lock)):  # a swap (finetune --overwrite) may have moved it
                os.unlink(run.lock)  # unlinked while still held: a waiter on this file sees it gone and retries
        except OSError:
            pass
        os.close(fd)
        if created:
            try:
                run.path.rmdir()  # only if empty: a refused or failed first run leaves no folder behind
            except OSError:
                pass


def _acquire(lock: Path, command: str, fcntl) -> int:
    import socket

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise RunDirError(f"{lock.parent}: {holder} is writing this run now, so {command} will not",
                              f"wait for it to finish (or stop it), then run again; {lock.name} is removed when "
                              "it ends") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as we opened it: lock the new one
    holder = f"edgetl {command} (pid {os.getpid()} on {socket.gethostname()})"
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd
