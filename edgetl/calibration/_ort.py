"""ONNX Runtime's quantization tools, imported by name with one clear error where a version lacks them.

Some of what edgetl drives (the QDQ quantizer fed precomputed ranges, the shape-inferring loader, the op
registry, the fp16 converter) lives in modules ONNX Runtime does not promise to keep; an onnxruntime that
moved one fails with one line naming it, not an ImportError traceback.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any

from edgetl.errors import QuantizeError, first_line


def ort_names(module: str, *names: str) -> Any:
    """getattr(module, name) for each name (one value, or a tuple for several)."""
    try:
        mod = importlib.import_module(module)
        values = tuple(getattr(mod, n) for n in names)
    except (ImportError, AttributeError) as e:
        try:
            import onnxruntime

            version = onnxruntime.__version__
        except ImportError:
            version = "(not installed)"
        raise QuantizeError(f"onnxruntime {version} lacks {module}.{'/'.join(names)} ({first_line(e)})",
                            "install the onnxruntime edgetl is tested with: pip install 'onnxruntime>=1.18'") from None
    return values[0] if len(values) == 1 else values


def private_copy(model_path: str | os.PathLike, folder: Path) -> Path:
    """`model_path` (and its external-data file) in `folder`, hard-linked where possible, else copied.

    ONNX Runtime's shape-inferring loader writes `<stem>-inferred.onnx` beside the model it reads and
    deletes it after: two quantizations of one run read and delete each other's file there. Handing it a
    copy in a private folder keeps that file private.
    """
    src = Path(model_path)
    dst = Path(folder) / src.name
    data = src.with_name(src.name + ".data")
    for a, b in ((src, dst), (data, dst.with_name(dst.name + ".data"))):
        if not a.exists():
            continue
        try:
            os.link(a, b)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(a, b)
    return dst
