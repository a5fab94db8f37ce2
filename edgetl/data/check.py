"""The up-front image check: every file opened (header) or decoded (full) once before training, in parallel,
with each verdict cached so that the next run over the same folder checks only what changed.

Modes: `full` decodes every pixel, as training will (finds truncated files); `header` opens each file and reads
its size and pixel mode (finds empty, garbage and non-image files, fast); `none` trusts the data. Whatever
passes and still fails later, during training, is skipped and listed there (edgetl.data.loader).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

from edgetl.data.cache import CHECK_MODES, CheckCache, default_cache_dir
from edgetl.data.folder import ImageList
from edgetl.data.images import load_rgb, probe_header
from edgetl.errors import DataError, first_line

Progress = Callable[[int, int], None]

# Below this many files to check, a process pool costs more to start than it saves: spawning two checkers
# costs about a second, and a serial full check of small images runs at 2,000-7,000 files/s. Measured on
# 32 px PNGs, 2 cores under load 7: 500 files 0.27 s serial vs 1.30 s in 2 processes, 1,800 files 0.66 vs
# 1.39 s, 5,391 files 2.50 vs 2.43 s (docs/BENCHMARKS.md, "Large image folders"). It was 512, which sent the
# old demo's 5,400-image rotation folder and every ~500-image digits run to the pool.
POOL_MIN_FILES = 4096


@dataclass
class FileCheck:
    """What a check found: `bad` maps path -> reason; `checked` files were opened or decoded now, `cached`
    were answered by the cache."""

    mode: str
    bad: dict[str, str] = field(default_factory=dict)
    checked: int = 0
    cached: int = 0
    seconds: float = 0.0


def check_one(path: str, mode: str) -> str | None:
    """None if `path` passes `mode`'s check, else the reason (without the path)."""
    try:
        if mode == "full":
            load_rgb(path)
        else:
            probe_header(path)
    except DataError as e:
        prefix = f"{path}: "
        return e.message[len(prefix):] if e.message.startswith(prefix) else e.message
    return None


def _check_chunk(jobs: Sequence[tuple[str, str]]) -> list[str | None]:
    return [check_one(path, mode) for path, mode in jobs]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_files(paths: Sequence[str], mode: str = "full", *, full: Collection[str] = (),
                root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None | bool = None,
                workers: int | None = None, progress: Progress | None = None,
                warn: Callable[[str], None] | None = None) -> FileCheck:
    """Check `paths` (see the module doc for `mode`; the paths in `full` are decoded in full whatever `mode`).
    The cache of `root` (default: the folder holding them all) lives in `cache_dir` (None: default_cache_dir();
    False: no cache). `workers`: processes (None: one per CPU, in-process when fewer than POOL_MIN_FILES need
    checking; 1: in-process). `progress(done, total)` counts files, cached ones included."""
    if mode not in CHECK_MODES:
        raise DataError(f"check {mode!r}: expected one of {', '.join(CHECK_MODES)}")
    t0 = time.perf_counter()
    result = FileCheck(mode)
    total = len(paths)
    full = full if isinstance(full, (set, frozenset)) else set(full)
    if mode == "none" or total == 0:
        if progress is not None:
            progress(total, total)
        return result
    cache = _open_cache(paths, root, cache_dir, warn)
    todo = _files_to_check(paths, mode, full, cache, result)
    tally = _Tally(result, cache, total - len(todo), total, progress)
    tally.report()
    n_workers = workers if workers is not None else (default_workers() if len(todo) >= POOL_MIN_FILES else 1)
    try:
        if n_workers <= 1 or len(todo) < 2:
            _check_in_process(todo, tally.record)
        else:
            _check_in_pool(todo, n_workers, tally.record)
    finally:
        # Also after an interruption: what was checked is not checked again.
        if cache is not None:
            cache.save()
    # In listing order, as the serial check always reported them.
    order = {p: i for i, p in enumerate(paths)}
    result.bad = dict(sorted(result.bad.items(), key=lambda kv: order[kv[0]]))
    result.seconds = time.perf_counter() - t0
    return result


def _open_cache(paths: Sequence[str], root: str | os.PathLike | None, cache_dir: str | os.PathLike | None | bool,
                warn: Callable[[str], None] | None) -> CheckCache | None:
    if cache_dir is False:
        return None
    if root is None:
        root = os.path.commonpath([os.path.abspath(os.path.dirname(p)) for p in paths])
    return CheckCache(default_cache_dir() if cache_dir in (None, True) else cache_dir, root, warn)


def _files_to_check(paths: Sequence[str], mode: str, full: Collection[str], cache: CheckCache | None,
                    result: FileCheck) -> list[tuple[str, str, str, int, int]]:
    """(path, mode, key, size, mtime_ns) of each file the cache cannot answer; the answered ones, and the files
    that cannot even be stat'ed, go into `result` now."""
    todo: list[tuple[str, str, str, int, int]] = []
    for path in paths:
        path_mode = "full" if path in full else mode
        try:
            st = os.stat(path)
        except OSError as e:  # gone, or a dangling link: bad, and nothing to cache
            result.bad[path] = f"unreadable image ({first_line(e)})"
            continue
        if cache is not None:
            key = cache.key(path)
            hit, reason = cache.lookup(key, st.st_size, st.st_mtime_ns, path_mode)
            if hit:
                result.cached += 1
                if reason is not None:
                    result.bad[path] = reason
                continue
        else:
            key = path
        todo.append((path, path_mode, key, st.st_size, st.st_mtime_ns))
    return todo


class _Tally:
    """Each checked chunk's verdicts into the result and the cache, and the count into `progress`."""

    def __init__(self, result: FileCheck, cache: CheckCache | None, done: int, total: int,
                 progress: Progress | None):
        self.result, self.cache, self.done, self.total, self.progress = result, cache, done, total, progress

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def record(self, chunk, reasons) -> None:
        for (path, path_mode, key, size, mtime), reason in zip(chunk, reasons):
            if reason is not None:
                self.result.bad[path] = reason
            if self.cache is not None:
                self.cache.store(key, size, mtime, path_mode, reason)
        self.result.checked += len(chunk)
        self.done += len(chunk)
        self.report()


def _check_in_process(todo, record) -> None:
    """In chunks of about 1% (at most 256 files), so that progress moves."""
    step = max(1, min(256, len(todo) // 100 or 1))
    for i in range(0, len(todo), step):
        chunk = todo[i:i + step]
        record(chunk, _check_chunk([c[:2] for c in chunk]))


def _check_in_pool(todo, n_workers: int, record) -> None:
    """Chunks to a pool of fresh interpreters ('spawn': no copy of a parent that holds torch's threads or a CUDA
    context); a few chunks per worker in flight keeps every core busy without queueing the whole list."""
    import multiprocessing

    chunk_size = max(16, min(512, len(todo) // (n_workers * 8) or 16))
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    n_workers = min(n_workers, len(chunks))
    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_ignore_sigint) as pool:
        pending = {}
        next_chunk = 0
        try:
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < n_workers * 4:
                    chunk = chunks[next_chunk]
                    pending[pool.submit(_check_chunk, [c[:2] for c in chunk])] = chunk
                    next_chunk += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(pending.pop(future), future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the chunks under way finish (seconds), then record stops
            raise


def _ignore_sigint() -> None:
    """Ctrl-C is the parent's to handle (it stops the pool and saves what was checked); a worker killed by it
    would print a traceback of its own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _keep_good(items: ImageList, bad: dict[str, str], skip_bad: bool, what: str = "") -> ImageList:
    """The usable images; without `skip_bad`, one DataError naming the first bad file and counting the others."""
    mine = [(p, bad[p]) for p in items.paths if p in bad]
    if mine and not skip_bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DataError(f"{mine[0][0]}: {mine[0][1]}{more}", "fix or remove them, or pass --skip-bad-images")
    kept = items.subset([i for i, p in enumerate(items.paths) if p not in bad])
    present = set(kept.labels)
    missing = [c for i, c in enumerate(items.classes) if i not in present]
    if missing:
        raise DataError(f"no readable images left{what} for class(es): {', '.join(missing)}")
    return kept


def check_images(items: ImageList, skip_bad: bool, progress: Progress | None = None, *, mode: str = "full",
                 root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None | bool = None,
                 workers: int | None = None, warn: Callable[[str], None] | None = None
                 ) -> tuple[ImageList, list[tuple[str, str]]]:
    """Check every image of `items`; returns the usable ones and (path, reason) for each bad one.
    Without `skip_bad`, the first bad image raises one DataError that also counts the others."""
    found = check_files(items.paths, mode, root=root, cache_dir=cache_dir, workers=workers, progress=progress,
                        warn=warn)
    return _keep_good(items, found.bad, skip_bad), list(found.bad.items())


@dataclass
class SplitCheck:
    train: ImageList
    val: ImageList
    bad: list[tuple[str, str]]
    checked: int
    cached: int
    seconds: float


def check_splits(train: ImageList, val: ImageList, root: str | os.PathLike, mode: str = "full", *,
                 skip_bad: bool = False, progress: Progress | None = None,
                 cache_dir: str | os.PathLike | None | bool = None, workers: int | None = None,
                 warn: Callable[[str], None] | None = None) -> SplitCheck:
    """Check a run's train and val images in one pass (one pool, one progress count, one cache file for `root`).
    Train follows `mode`; val is decoded in full unless `mode` is none: every epoch scores it and the final
    evaluation reads it again, so an unreadable val image must be found now, not after training."""
    if mode == "none":
        return SplitCheck(train, val, [], 0, 0, 0.0)
    found = check_files(train.paths + val.paths, mode, full=val.paths, root=root, cache_dir=cache_dir,
                        workers=workers, progress=progress, warn=warn)
    kept_train = _keep_good(train, found.bad, skip_bad, " in train")
    kept_val = _keep_good(val, found.bad, skip_bad, " in val")
    return SplitCheck(kept_train, kept_val, list(found.bad.items()), found.checked, found.cached, found.seconds)
