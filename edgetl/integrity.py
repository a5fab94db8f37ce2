"""Recorded hashes, checked when a model file is loaded: a changed file is refused, not silently scored.

export_report.json records model.onnx's SHA-256 (and its external data's), quant_report.json each
quantized graph's, and the model card inside model.safetensors a digest of its tensors. A file
without a record (an older run, a copy outside a run) is not checked. Each file is hashed once per
process while its size, mtime and inode stay the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from edgetl.errors import ModelError, first_line
from edgetl.portable.forms import FP32_FORM, form_of_file

EXPORT_REPORT = "export_report.json"
QUANT_REPORT = "quant_report.json"

_digests: dict[tuple, str] = {}


def _cached(path: Path, compute: Callable[[], str]) -> str:
    st = path.stat()
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = compute()
    return _digests[key]


def file_sha256(path: str | os.PathLike) -> str:
    from edgetl.io import sha256_file

    path = Path(path)
    return _cached(path, lambda: sha256_file(path))


def _read_report(path: Path, redo: str) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ({first_line(e)}), so the model files it records cannot be checked",
                         f"re-run `{redo}`") from None
    if not isinstance(report, dict):
        raise ModelError(f"{path}: not an edgetl report, so the model files it records cannot be checked",
                         f"re-run `{redo}`")
    return report


def recorded_onnx_hashes(path: str | os.PathLike) -> tuple[dict[Path, str], str, Path] | None:
    """({file: recorded sha256}, the command that rewrites them, the report) for an ONNX file of a run;
    None when no report in its folder records it."""
    path = Path(path)
    run = path.parent
    export_report = run / EXPORT_REPORT
    if export_report.exists() and path.name == "model.onnx":
        report = _read_report(export_report, FP32_FORM.command(str(run)))
        if report.get("model_file") == path.name and isinstance(report.get("sha256"), str):
            files = {path: report["sha256"]}
            if report.get("external_data") and isinstance(report.get("external_data_sha256"), str):
                files[run / report["external_data"]] = report["external_data_sha256"]
            return files, FP32_FORM.command(str(run)), export_report
        return None
    quant_report = run / QUANT_REPORT
    if quant_report.exists():
        report = _read_report(quant_report, f"edgetl quantize {run}")
        entries = report.get("entries")
        for entry in entries.values() if isinstance(entries, dict) else ():
            if isinstance(entry, dict) and entry.get("model_file") == path.name and isinstance(entry.get("model_sha256"), str):
                form = form_of_file(path.name)
                redo = form.command(str(run)) if form else f"edgetl quantize {run}"
                return {path: entry["model_sha256"]}, redo, quant_report
    return None


def verify_onnx(path: str | os.PathLike) -> None:
    """Refuse an ONNX file of a run whose bytes differ from what export/quantize recorded."""
    record = recorded_onnx_hashes(path)
    if record is None:
        return
    files, redo, report = record
    for file, expected in files.items():
        if not file.exists():
            raise ModelError(f"{file}: missing, though {report.name} records it", f"re-run `{redo}`")
        actual = file_sha256(file)
        if actual != expected:
            raise ModelError(f"{file}: changed since it was written (SHA-256 {actual[:12]}..., {report.name} "
                             f"recorded {expected[:12]}...); refusing to run a damaged or altered model",
                             f"re-run `{redo}`")


def verify_weights(path: str | os.PathLike, state: dict, expected: str | None) -> None:
    """Refuse a model.safetensors whose tensors differ from the digest in its own model card."""

    if not expected:
        return
    path = Path(path)
    actual = _cached(path, lambda: weights_digest(state))
    if actual != expected:
        raise ModelError(f"{path}: its tensors changed since `edgetl finetune` wrote them (digest {actual[:12]}..., "
                         f"the model card records {expected[:12]}...); refusing to run a damaged or altered model",
                         "restore the file, or re-run `edgetl finetune`")


def weights_digest(state: dict) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: identifies the weights independently of file metadata."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
