"""ImageFolder discovery, splits, and every kind of awkward or broken image."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from edgetl.data import check_images, load_rgb, load_splits, scan_folder
from edgetl.errors import DataError


def _write(path, image: Image.Image, **save_kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_kwargs)
    return path


def _folder(root, classes=("cat", "dog"), n=6, size=(20, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(n):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            _write(root / c / f"{i}.png", Image.fromarray(arr))
    return root


def test_train_val_layout(digits):
    train, val = load_splits(digits["source"])
    assert train.classes == val.classes == ["0", "1", "2", "3", "4"]
    assert len(train) == 5 * 64 and len(val) == 5 * 16
    assert set(train.labels) == set(range(5))


def test_split_is_stratified_and_seeded(tmp_path):
    root = _folder(tmp_path / "d", n=10)
    a_train, a_val = load_splits(root, val_fraction=0.3, seed=1)
    b_train, b_val = load_splits(root, val_fraction=0.3, seed=1)
    c_train, _ = load_splits(root, val_fraction=0.3, seed=2)
    assert a_val.paths == b_val.paths and a_train.paths == b_train.paths
    assert a_train.paths != c_train.paths
    assert [a_val.labels.count(i) for i in range(2)] == [3, 3]
    assert not set(a_train.paths) & set(a_val.paths)


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_splits(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_splits(f)


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_splits(root)


def test_single_class(tmp_path):
    root = _folder(tmp_path / "d", classes=("only",))
    with pytest.raises(DataError, match="only one class"):
        load_splits(root)


def test_train_val_with_different_classes(tmp_path):
    _folder(tmp_path / "d" / "train", classes=("a", "b", "c"))
    _folder(tmp_path / "d" / "val", classes=("a", "b", "z"))
    with pytest.raises(DataError, match=r"only in train: c; only in val: z"):
        load_splits(tmp_path / "d")


def test_unknown_class_for_model(tmp_path):
    root = _folder(tmp_path / "d", classes=("a", "x"))
    with pytest.raises(DataError, match="classes the model does not know: x"):
        scan_folder(root, classes=["a", "b"])
    items = scan_folder(_folder(tmp_path / "e", classes=("b",)), classes=["a", "b"])
    assert set(items.labels) == {1}  # a subset of classes keeps the model's label order


def test_image_modes_become_rgb_uint8(tmp_path):
    grey = _write(tmp_path / "l.png", Image.fromarray(np.full((4, 5), 200, np.uint8), mode="L"))
    rgba = _write(tmp_path / "rgba.png", Image.new("RGBA", (5, 4), (10, 20, 30, 0)))
    deep = _write(tmp_path / "16.png", Image.fromarray(np.full((4, 5), 65535 // 2, np.uint16)))
    cmyk = _write(tmp_path / "cmyk.jpg", Image.new("CMYK", (5, 4), (0, 255, 255, 0)), quality=100)
    pal = _write(tmp_path / "p.gif", Image.new("P", (5, 4), 3))
    for path in (grey, rgba, deep, cmyk, pal):
        arr = load_rgb(path)
        assert arr.dtype == np.uint8 and arr.shape == (4, 5, 3), path.name
    assert (load_rgb(grey) == 200).all()
    assert tuple(load_rgb(rgba)[0, 0]) == (10, 20, 30)
    assert abs(int(load_rgb(deep)[0, 0, 0]) - 127) <= 1  # scaled from 16 bit, not clipped to 255
    r, g, b = load_rgb(cmyk)[0, 0]
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = _write(tmp_path / "rot.jpg", img, exif=exif.tobytes())
    assert load_rgb(path).shape == (30, 10, 3)


def test_corrupt_and_truncated_images(tmp_path):
    root = _folder(tmp_path / "d", n=4)
    (root / "cat" / "garbage.jpg").write_bytes(b"not an image at all")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(buf, format="JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    items = scan_folder(root)
    with pytest.raises(DataError) as e:
        check_images(items, skip_bad=False)
    assert "garbage.jpg" in e.value.message and "and 1 more" in e.value.message
    assert "--skip-bad-images" in e.value.hint
    kept, bad = check_images(items, skip_bad=True)
    assert len(kept) == 8 and sorted(p.split("/")[-1] for p, _ in bad) == ["garbage.jpg", "truncated.jpg"]


def test_class_with_only_bad_images(tmp_path):
    root = _folder(tmp_path / "d", n=3)
    shutil.rmtree(root / "dog")
    (root / "dog").mkdir()
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="no readable images left for class"):
        check_images(scan_folder(root), skip_bad=True)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (8-bit greyscale) with a tiny zlib stream: the shape of a
    decompression bomb (a few bytes on disk, gigabytes once decoded), without making the gigabytes here."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 4)  # four rows; the decoder never gets that far
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_bad_image(tmp_path):
    root = _folder(tmp_path / "d", n=3)
    bomb = root / "cat" / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    with pytest.raises(DataError, match=r"bomb\.png: image too large to decode safely"):
        load_rgb(bomb)
    items = scan_folder(root)
    with pytest.raises(DataError, match="bomb.png"):
        check_images(items, skip_bad=False)
    kept, bad = check_images(items, skip_bad=True)
    assert len(kept) == 6 and [p for p, _ in bad] == [str(bomb)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_named_like_an_image_is_not_read(tmp_path):
    root = _folder(tmp_path / "d", n=3)
    fifo = root / "dog" / "pipe.png"
    os.mkfifo(fifo)
    items = scan_folder(root)
    assert str(fifo) in items.paths  # named like an image: listed, then refused when read, without blocking
    with pytest.raises(DataError, match=r"pipe\.png: unreadable image \(not a regular file: a FIFO\)"):
        load_rgb(fifo)
    kept, bad = check_images(items, skip_bad=True)
    assert len(kept) == 6 and bad == [(str(fifo), "unreadable image (not a regular file: a FIFO)")]


def test_symlinked_class_folder_inside_data_is_refused(tmp_path):
    root = _folder(tmp_path / "d", n=3)
    (root / "all").symlink_to(root, target_is_directory=True)  # would read cat and dog again as "all"
    with pytest.raises(DataError, match=r"all: class folder is a symlink to .*inside"):
        load_splits(root)
    (root / "all").unlink()
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)
    with pytest.raises(DataError, match="kitten: class folder is a symlink"):
        scan_folder(root)
    (root / "kitten").unlink()
    (root / "up").symlink_to(tmp_path, target_is_directory=True)  # an ancestor: a loop
    with pytest.raises(DataError, match="up: class folder is a symlink"):
        scan_folder(root)
    (root / "up").unlink()
    # train/val: a val class linked to the train class of the same name leaks train into val
    layout = tmp_path / "tv"
    _folder(layout / "train")
    (layout / "val").mkdir()
    for c in ("cat", "dog"):
        (layout / "val" / c).symlink_to(layout / "train" / c, target_is_directory=True)
    with pytest.raises(DataError, match="val/cat: class folder is a symlink"):
        load_splits(layout)


def test_symlinked_class_folder_outside_data_is_fine(tmp_path):
    elsewhere = _folder(tmp_path / "store", classes=("bird",), n=3)
    root = _folder(tmp_path / "d", n=3)
    (root / "bird").symlink_to(elsewhere / "bird", target_is_directory=True)
    items = scan_folder(root)
    assert items.classes == ["bird", "cat", "dog"] and len(items) == 9


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "cr\r", "nel\x85", "sep\u2028"])
def test_class_name_with_a_control_character_is_refused(tmp_path, name):
    root = _folder(tmp_path / "d", classes=("ok", name), n=2)
    with pytest.raises(DataError, match="holds a control character") as e:
        load_splits(root, val_fraction=0.5)
    assert "\n" not in e.value.message  # the message itself stays one line
    text = "caf\u00e9 \u0645\u06cc\u200c\u062e"  # accents and a Persian zero-width non-joiner are text
    assert scan_folder(_folder(tmp_path / "e", classes=("ok", text), n=2)).classes == [text, "ok"]


def _card(size: int = 32):
    from edgetl.card import ModelCard

    return ModelCard(model="resnet18", class_names=["a", "b"], input_size=(3, size, size), resize=size,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("steps, expect", [
    ("flip", "turns a 101x81 image into 101x81, the model needs 32x32"),
    ("crop", "fails on a 11x17 image"),
    ("tensor", "into a Tensor"),
])
def test_augmentation_yaml_without_a_fixed_size_is_refused_up_front(tmp_path, steps, expect):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from edgetl.data.transforms import train_transform

    pipelines = {"flip": [A.HorizontalFlip(p=0.5)], "crop": [A.RandomCrop(32, 32)],
                 "tensor": [A.Resize(32, 32), ToTensorV2()]}
    path = tmp_path / "aug.yaml"
    A.save(A.Compose(pipelines[steps]), str(path), data_format="yaml")
    with pytest.raises(DataError, match=expect) as e:
        train_transform(_card(), path)
    assert "aug.yaml" in e.value.message and "resize" in e.value.hint


def test_augmentation_yaml_with_a_final_resize_works_on_mixed_sizes(tmp_path):
    import albumentations as A

    from edgetl.data.transforms import train_transform

    path = tmp_path / "aug.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.Resize(40, 40), A.RandomCrop(32, 32)]), str(path), data_format="yaml")
    t = train_transform(_card(), path, seed=0)
    for hw in ((20, 90), (300, 50)):
        out = t(image=np.zeros((*hw, 3), np.uint8))["image"]
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
