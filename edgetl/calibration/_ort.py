"""ONNX Runtime's quantization tools, imported by name with one clear error where a version lacks them.

Some of what edgetl drives (the QDQ quantizer fed precomputed ranges, the shape-inferring loader, the op
registry, the fp16 converter) lives in modules ONNX Runtime does not promise to keep; an onnxruntime that
moved one fails with one line naming it, not an ImportError traceback.
"""

from __future__ import annotations

import importlib
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
