"""Decode one image file into HxWx3 uint8 RGB, whatever its mode, bit depth or EXIF orientation."""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgetl.errors import DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Return the image as HxWx3 uint8 RGB, upright. Raises DataError naming the file if unusable."""
    with _pillow_errors_as_data_error(path), _open_regular(path) as f, warnings.catch_warnings():
        # PIL warns on some odd-but-valid files (palette transparency, huge EXIF); not the user's concern.
        warnings.simplefilter("ignore")
        with Image.open(f) as img:
            img.load()  # full decode here, so a truncated file fails now, not mid-epoch
            img = ImageOps.exif_transpose(img)
            return _to_rgb_array(img)


@contextlib.contextmanager
def _pillow_errors_as_data_error(path: str | os.PathLike) -> Iterator[None]:
    """What Pillow (or opening the file) raises for an unusable image, as one DataError naming the file."""
    try:
        yield
    except Image.DecompressionBombError as e:
        # Pillow's guard against a small file that decodes to gigabytes (its MAX_IMAGE_PIXELS, twice over).
        raise DataError(f"{path}: image too large to decode safely ({first_line(e)})", "fix or remove it") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image ({_UNIDENTIFIED})", "fix or remove it") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({first_line(e)})", "fix or remove it") from None


# PIL's own text names the file object (`<_io.BufferedReader name=5>`, a descriptor number), which differs from
# process to process; the path is in the message already.
_UNIDENTIFIED = "not an image format Pillow can read"


def probe_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header only, without decoding pixels: the cheap check. It finds
    what is not an image at all (empty, garbage, a FIFO, an unknown format) and absurd sizes, but not a file
    truncated inside its pixel data: that only a full decode (load_rgb) finds."""
    with _pillow_errors_as_data_error(path), _open_regular(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(f) as img:  # parses the header; raises DecompressionBombError on a bomb's size
            width, height, mode = img.width, img.height, img.mode
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: unreadable image (size {width}x{height})", "fix or remove it")
    if mode not in _KNOWN_MODES:
        raise DataError(f"{path}: unreadable image (pixel mode {mode!r})", "fix or remove it")
    return width, height, mode


# Modes load_rgb turns into RGB: _to_rgb_array scales I/F, PIL converts the others ("La" it cannot).
_KNOWN_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def _open_regular(path: str | os.PathLike):
    """Open for reading only if it is a regular file. O_NONBLOCK, so that a FIFO (or a device) with an
    image's name returns at once instead of waiting for a writer; the check is on the opened file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "special"
            raise ValueError(f"not a regular file: {kind}")
        if st.st_size == 0:
            raise ValueError("empty file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit and float greyscale: scale by the type's range, not by clipping at 255.
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
            arr = arr.astype(np.float64) / 65535.0 * 255.0
        elif arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        # Alpha is dropped (as timm and torchvision do); CMYK, palette, L and LA convert exactly.
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
