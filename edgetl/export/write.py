"""The one way edgetl writes an ONNX graph: checked by onnx.checker (full check) before it lands.

Tools that edit graphs (ONNX Runtime's quantizer and float16 converter, edgetl's own Q/DQ surgery) append
nodes at the end, leaving a graph ONNX Runtime tolerates but the ONNX checker, Polygraphy's `check lint` and
other readers reject ("Nodes in a graph must be topologically sorted"). `sort_nodes` restores the order with
onnxscript's IR (a maintained utility); `save_checked` writes to a temporary file beside the target, runs
`onnx.checker.check_model(full_check=True)` on that file and renames it over the target only if it passed.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgetl.errors import EdgetlError, first_line
from edgetl.io import atomic_path

DATA_SUFFIX = ".data"


def sort_nodes(model):
    """`model` with its nodes in topological order (a new ModelProto; metadata and value_info kept)."""
    from onnxscript import ir

    graph_ir = ir.from_proto(model)
    graph_ir.graph.sort()
    return ir.to_proto(graph_ir)


def check(path: str | os.PathLike, error: type[EdgetlError], what: str,
          hint: str = "this is a bug in edgetl: please report it") -> None:
    """onnx.checker with full (strict) shape inference on a written file; `error` with one line if it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # the checker and shape inference raise several error types
        raise error(f"{what}: onnx.checker rejected the graph ({first_line(e)}); nothing written", hint) from None


def save_checked(model, target: str | os.PathLike, error: type[EdgetlError], what: str | None = None,
                 external_data: bool = False, hint: str = "this is a bug in edgetl: please report it") -> Path:
    """Write `model` to `target` atomically, only if the written file passes the full ONNX check.

    With `external_data`, the weights go to `<target name>.data` beside it (a relative location, so the
    folder stays movable); that file is written in place, so callers put `target` in a private folder
    (edgetl export does) and move both files into the run afterwards.
    """
    import onnx

    target = Path(target)
    with atomic_path(target) as tmp:
        if external_data:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=target.name + DATA_SUFFIX, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
        check(tmp, error, what or target.name, hint)
    return target
