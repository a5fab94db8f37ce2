"""The up-front image check (parallel, cached, full/header/none), skipping images that fail during training,
and the one DataLoader factory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from edgetl.data import check_images, scan_folder
from edgetl.data.cache import CheckCache, cache_file
from edgetl.data.check import FileCheck, _files_to_check, check_files, check_one, check_splits
from edgetl.errors import DataError

BAD = ("empty.jpg", "garbage.jpg", "truncated.jpg")


def _jpeg_bytes(size: int = 32, value: int = 90) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG cut inside its pixel data: its header is intact (PIL opens it), its decode fails."""
    data = _jpeg_bytes(32, 7)
    return data[: len(data) * 2 // 3]


def _folder(root, n: int = 12, bad: bool = True):
    """Two classes of n small JPEGs (16 to 31 px), plus an empty, a garbage and a truncated file in 'b'."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i:03d}.jpg").write_bytes(_jpeg_bytes(16 + i % 16, i))
    if bad:
        (root / "b" / "empty.jpg").write_bytes(b"")
        (root / "b" / "garbage.jpg").write_bytes(b"this is not a JPEG at all" * 4)
        (root / "b" / "truncated.jpg").write_bytes(_truncated_jpeg())
    return root


def _names(bad: dict) -> list[str]:
    return sorted(os.path.basename(p) for p in bad)


def test_parallel_check_finds_what_the_serial_one_finds(tmp_path):
    root = _folder(tmp_path / "d")
    paths = scan_folder(root).paths
    serial = check_files(paths, "full", workers=1, cache_dir=False)
    parallel = check_files(paths, "full", workers=2, cache_dir=False)
    assert _names(serial.bad) == list(BAD)
    assert parallel.bad == serial.bad  # same files, same reasons, same (listing) order
    assert list(parallel.bad) == [p for p in paths if p in serial.bad]
    assert serial.checked == parallel.checked == len(paths) == 27 and parallel.cached == 0
    assert "truncated" in serial.bad[str(root / "b" / "truncated.jpg")]
    kept_serial, _ = check_images(scan_folder(root), skip_bad=True, workers=1, cache_dir=False)
    kept_parallel, bad = check_images(scan_folder(root), skip_bad=True, workers=2, cache_dir=False)
    assert kept_parallel.paths == kept_serial.paths and len(kept_parallel) == 24
    assert [p for p, _ in bad] == list(serial.bad)


def test_progress_counts_every_file_once(tmp_path):
    root = _folder(tmp_path / "d", n=20, bad=False)
    paths = scan_folder(root).paths
    seen: list[tuple[int, int]] = []
    check_files(paths, "header", workers=2, cache_dir=False, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_second_check_reads_the_cache_and_rechecks_only_what_changed(tmp_path):
    root = _folder(tmp_path / "d")
    cache = tmp_path / "cache"
    paths = scan_folder(root).paths
    first = check_files(paths, "full", root=root, cache_dir=cache)
    assert first.checked == 27 and first.cached == 0
    assert [p.name for p in cache.iterdir()] == [cache_file(cache, root).name]  # one file per data root

    again = check_files(paths, "full", root=root, cache_dir=cache)
    assert again.checked == 0 and again.cached == 27 and again.bad == first.bad  # bad files stay bad

    touched = root / "a" / "003.jpg"
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after_touch = check_files(paths, "full", root=root, cache_dir=cache)
    assert after_touch.checked == 1 and after_touch.cached == 26 and after_touch.bad == first.bad

    (root / "b" / "truncated.jpg").write_bytes(_jpeg_bytes(24, 3))  # repaired: a new size, a new verdict
    repaired = check_files(paths, "full", root=root, cache_dir=cache)
    assert repaired.checked == 1 and _names(repaired.bad) == ["empty.jpg", "garbage.jpg"]

    # The same root spelt through a symlink shares the cache file.
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    via_link = check_files(scan_folder(link).paths, "full", root=link, cache_dir=cache)
    assert via_link.checked == 0 and via_link.cached == 27


def test_header_mode_passes_a_truncated_jpeg_that_full_mode_refuses(tmp_path):
    root = _folder(tmp_path / "d")
    truncated = str(root / "b" / "truncated.jpg")
    assert check_one(truncated, "header") is None
    assert check_one(truncated, "full").startswith("unreadable image (image file is truncated")
    cache = tmp_path / "cache"
    paths = scan_folder(root).paths
    header = check_files(paths, "header", root=root, cache_dir=cache)
    assert _names(header.bad) == ["empty.jpg", "garbage.jpg"] and header.checked == 27
    # A header verdict does not answer a full check: the good ones are decoded now; the known bad stay bad.
    full = check_files(paths, "full", root=root, cache_dir=cache)
    assert _names(full.bad) == list(BAD) and full.checked == 25 and full.cached == 2
    # A full verdict answers a header check (the stronger check): the truncated file stays known as bad.
    header_again = check_files(paths, "header", root=root, cache_dir=cache)
    assert header_again.checked == 0 and _names(header_again.bad) == list(BAD)


def test_an_interrupted_check_keeps_what_it_checked(tmp_path):
    root = _folder(tmp_path / "d")
    paths = scan_folder(root).paths

    def interrupt_after_ten(done, total):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_files(paths, "full", root=root, cache_dir=tmp_path / "cache", workers=1, progress=interrupt_after_ten)
    resumed = check_files(paths, "full", root=root, cache_dir=tmp_path / "cache", workers=1)
    assert resumed.cached == 10 and resumed.checked == 17 and _names(resumed.bad) == list(BAD)


def test_files_to_check_leaves_out_what_the_cache_answers_and_what_is_gone(tmp_path):
    root = _folder(tmp_path / "d", n=2, bad=False)
    paths = scan_folder(root).paths
    gone = str(root / "a" / "gone.jpg")
    cache = CheckCache(tmp_path / "cache", root)
    st = os.stat(paths[0])
    cache.store(cache.key(paths[0]), st.st_size, st.st_mtime_ns, "header", "unreadable image (x)")
    st = os.stat(paths[1])
    cache.store(cache.key(paths[1]), st.st_size, st.st_mtime_ns, "header", None)
    result = FileCheck("header")
    todo = _files_to_check(paths + [gone], "header", {paths[1], paths[2]}, cache, result)
    # paths[1] was checked for its header only, and `full` asks for a decode: checked again, in full
    assert [(t[0], t[1]) for t in todo] == [(paths[1], "full"), (paths[2], "full"), (paths[3], "header")]
    assert result.cached == 1 and result.bad[paths[0]] == "unreadable image (x)"
    assert result.bad[gone].startswith("unreadable image (") and result.checked == 0
    without_cache = _files_to_check(paths, "full", (), None, FileCheck("full"))
    assert [t[2] for t in without_cache] == paths  # the key is the path itself


def test_none_mode_reads_nothing(tmp_path):
    root = _folder(tmp_path / "d")
    items = scan_folder(root)
    result = check_files(items.paths, "none", cache_dir=tmp_path / "cache")
    assert result.bad == {} and result.checked == 0 and not (tmp_path / "cache").exists()
    split = check_splits(items, items.subset([0]), root, "none", cache_dir=tmp_path / "cache")
    assert len(split.train) == 27 and split.bad == []


def test_split_check_decodes_val_in_full_whatever_the_mode(tmp_path):
    root = _folder(tmp_path / "d", bad=False)
    (root / "b" / "truncated.jpg").write_bytes(_truncated_jpeg())
    items = scan_folder(root)
    in_val = [p.endswith(("truncated.jpg", "000.jpg")) for p in items.paths]
    train = items.subset([i for i, v in enumerate(in_val) if not v])
    val = items.subset([i for i, v in enumerate(in_val) if v])
    assert len(val) == 3
    with pytest.raises(DataError, match=r"truncated\.jpg: unreadable image \(image file is truncated"):
        check_splits(train, val, root, "header", cache_dir=False)
    checked = check_splits(train, val, root, "header", skip_bad=True, cache_dir=False)
    assert _names(dict(checked.bad)) == ["truncated.jpg"] and checked.checked == 25
    assert len(checked.train) == 22 and len(checked.val) == 2
    # In train, the same file passes a header check (training skips it when it meets it).
    as_train = check_splits(val, train, root, "header", cache_dir=False)
    assert as_train.bad == [] and len(as_train.train) == 3


def test_two_runs_sharing_a_cache_keep_each_others_entries(tmp_path):
    root = _folder(tmp_path / "d", n=2, bad=False)
    a, b = CheckCache(tmp_path / "cache", root), CheckCache(tmp_path / "cache", root)  # both read an empty cache
    a.store("a/000.jpg", 1, 2, "full", None)
    b.store("b/000.jpg", 3, 4, "header", "unreadable image (x)")
    assert a.save() and b.save()  # b's write merges what a wrote since b read
    files = json.loads(cache_file(tmp_path / "cache", root).read_text())["files"]
    assert files == {"a/000.jpg": [1, 2, "full", None], "b/000.jpg": [3, 4, "header", "unreadable image (x)"]}


def test_cache_written_atomically_and_a_corrupt_one_ignored_with_a_warning(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    cache = tmp_path / "cache"
    paths = scan_folder(root).paths
    check_files(paths, "full", root=root, cache_dir=cache)
    path = cache_file(cache, root)
    good_cache = path.read_bytes()

    # A write that fails half-way (disk full) leaves the previous cache whole and no temporary file behind.
    import edgetl.data.cache as cache_mod

    real_write_text = cache_mod.Path.write_text

    def half_write_then_disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.Path, "write_text", half_write_then_disk_full)
    touched = root / "a" / "001.jpg"
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 1_000_000))
    warnings: list[str] = []
    result = check_files(paths, "full", root=root, cache_dir=cache, warn=warnings.append)
    assert result.checked == 1 and _names(result.bad) == list(BAD)
    assert len(warnings) == 1 and "not written" in warnings[0] and "No space left" in warnings[0]
    assert path.read_bytes() == good_cache and os.listdir(cache) == [path.name]
    monkeypatch.undo()

    wrong_entries = json.dumps({"format": cache_mod.CACHE_FORMAT, "reader": cache_mod.READER_VERSION,
                                "root": os.path.realpath(root), "files": {"a/000.jpg": [1, "x"]}}).encode()
    for corrupt in (good_cache[: len(good_cache) // 2], b"\x00\xff garbage", b"[1, 2]", wrong_entries):
        path.write_bytes(corrupt)
        warnings = []
        result = check_files(paths, "full", root=root, cache_dir=cache, warn=warnings.append)
        assert result.checked == 27 and _names(result.bad) == list(BAD)  # every image checked again, no crash
        assert len(warnings) == 1 and ("is corrupt" in warnings[0] or "unreadable" in warnings[0]), warnings
        assert json.loads(path.read_text())["format"] == "edgetl-image-check/1"  # rewritten whole

    # A cache folder that cannot be created is a warning too.
    (tmp_path / "file").write_text("x")
    warnings = []
    result = check_files(paths, "full", root=root, cache_dir=tmp_path / "file" / "cache", warn=warnings.append)
    assert result.checked == 27 and len(warnings) == 1 and "not written" in warnings[0]


def test_loader_drops_unreadable_images_and_reports_them(tmp_path):
    import torch

    from edgetl.data import ImageDataset, make_loader

    root = _folder(tmp_path / "d", n=6, bad=False)
    (root / "a" / "0025-truncated.jpg").write_bytes(_truncated_jpeg())  # 4th of 13: in the first batch
    items = scan_folder(root)
    assert items.paths[3].endswith("0025-truncated.jpg")

    def transform(image):
        return {"image": np.zeros((8, 8, 3), np.float32) + image.mean()}

    ds = ImageDataset(items, transform, skip_bad=True)
    reported = []
    loader = make_loader(ds, 4, shuffle=False, workers=2, device="cpu", seed=0, on_skip=reported.extend)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [3, 4, 4, 1] and len(reported) == 1
    assert reported[0].path.endswith("truncated.jpg") and "truncated" in reported[0].reason
    assert all(isinstance(x, torch.Tensor) and x.shape[1:] == (3, 8, 8) for x, _ in batches)
    # The loss then averages over the real images only: the batch that held the bad file has 3.
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [0] * 6 + [1] * 6

    with pytest.raises(DataError, match="truncated.jpg"):  # without skip_bad the dataset raises, as before
        ImageDataset(items, transform)[3]


def test_loader_settings_follow_the_device():
    from edgetl.data import make_loader

    ds = list(range(10))
    cpu = make_loader(ds, 2, shuffle=True, workers=2, device="cpu", seed=1)
    assert not cpu.pin_memory and not cpu.persistent_workers and cpu.prefetch_factor == 2
    cuda = make_loader(ds, 2, shuffle=True, workers=2, device="cuda", seed=1)
    assert cuda.pin_memory and cuda.persistent_workers and cuda.prefetch_factor == 4
    none = make_loader(ds, 2, shuffle=True, workers=0, device="cuda", seed=1)
    assert not none.persistent_workers
    # The order follows the seed.
    pairs = [(i, i) for i in range(10)]

    def order(seed):
        return [x.tolist() for x, _ in make_loader(pairs, 3, shuffle=True, workers=0, device="cpu", seed=seed)]

    assert order(5) == order(5) != order(6) and sorted(sum(order(5), [])) == list(range(10))


# --- finetune: a truncated image met during training, and --check on the command line ---------------------
# A tiny data set (2 classes x 8 train + 4 val, 32 px) and timm's test_resnet keep each run to seconds.

def _tiny_data(tmp_path):
    data = tmp_path / "data"
    for split, n in (("train", 8), ("val", 4)):
        for k, c in enumerate(("a", "b")):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                (data / split / c / f"{i}.jpg").write_bytes(_jpeg_bytes(32, 40 * k + i))
    bad = data / "train" / "b" / "zz-truncated.jpg"
    bad.write_bytes(_truncated_jpeg())
    return data, bad


def test_truncated_image_met_in_training_is_skipped_and_listed(tmp_path):
    from edgetl.rundir import RunDir
    from edgetl.finetune import finetune
    from tests.conftest import Recorder, tiny_config

    data, bad = _tiny_data(tmp_path)
    garbage = data / "train" / "a" / "garbage.jpg"
    garbage.write_bytes(b"not an image" * 8)
    recorder = Recorder()
    cfg = tiny_config(data, model="test_resnet", epochs=2, batch_size=4, check="header", skip_bad_images=True)
    finetune(tmp_path / "run", cfg, recorder)
    messages = recorder.messages + recorder.warnings
    run = RunDir(tmp_path / "run")
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["n"] == 8
    listed = json.loads((run.path / "bad_images.json").read_text())["images"]
    # The header check found the garbage file; the truncated one passed it and was met in both epochs, listed once.
    assert [(e["path"], e["found"], e["epoch"]) for e in listed] == [(str(garbage), "check", None),
                                                                     (str(bad), "training", 1)]
    assert "truncated" in listed[1]["reason"]
    assert sum("skipped unreadable image" in m and "zz-truncated.jpg" in m for m in messages) == 1
    assert yaml.safe_load((run.path / "config.yaml").read_text())["check"] == "header"


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "edgetl", *map(str, args)], capture_output=True, text=True,
                          env=env, **kwargs)


def test_cli_check_option(tmp_path):
    data, bad = _tiny_data(tmp_path)
    common = ["--model", "test_resnet", "--no-pretrained", "--img-size", "32", "--epochs", "1", "--workers", "0",
              "--augment", "crop", "--batch-size", "4"]
    res = _cli("finetune", data, "--out", tmp_path / "bogus", "--check", "thorough", *common)
    assert res.returncode == 2 and "thorough" in res.stderr

    # A YAML check is used unless --check is given: header passes the file, training skips and lists it.
    (tmp_path / "settings.yaml").write_text("check: header\n")
    res = _cli("finetune", data, "--out", tmp_path / "header", "--config", tmp_path / "settings.yaml", *common)
    assert res.returncode == 0, res.stderr
    assert "skipped unreadable image" in res.stdout and "zz-truncated.jpg" in res.stdout
    listed = json.loads((tmp_path / "header" / "bad_images.json").read_text())["images"]
    assert [(e["path"], e["found"]) for e in listed] == [(str(bad), "training")]

    # none reads nothing up front: the same skip happens in training.
    res = _cli("finetune", data, "--out", tmp_path / "none", "--check", "none", *common)
    assert res.returncode == 0, res.stderr
    assert "checking" not in res.stdout and "zz-truncated.jpg" in res.stdout
    assert yaml.safe_load((tmp_path / "none" / "config.yaml").read_text())["check"] == "none"

    # full (the default; and --check full wins over the YAML) decodes the file before training: one line, no run.
    for extra in ([], ["--config", tmp_path / "settings.yaml", "--check", "full"]):
        res = _cli("finetune", data, "--out", tmp_path / "full", *extra, *common)
        assert res.returncode == 1 and "zz-truncated.jpg: unreadable image (image file is truncated" in res.stderr
        assert "--skip-bad-images" in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / "full").exists()
