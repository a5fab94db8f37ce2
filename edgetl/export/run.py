"""torch -> ONNX: a self-describing graph (model card in metadata_props), checked against PyTorch.

`export(run)` writes RUN/model.onnx only after every check passed: the ONNX checker with full
shape inference, and parity with the PyTorch model on the run's own validation images through
ONNX Runtime (max |delta logit| and top-1 agreement). An optional onnxslim pass is kept only if
parity still holds. Everything is built in a private temporary folder inside the run directory
and renamed into place at the end, so a failed export leaves an older model.onnx untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from edgetl.card import ModelCard
from edgetl.errors import ExportError, RunDirError, first_line
from edgetl.export.settings import ExportSettings
from edgetl.metrics import top1, top1_agreement
from edgetl.models import load_trained
from edgetl.portable.forms import FP32_FORM
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, record_settings

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
DATA_SUFFIX = ".data"
_PARITY_CHUNK = 32


class FusedPreprocess(nn.Module):
    """uint8 NHWC RGB in, logits out: Cast, Transpose, (x - mean*255) * 1/(std*255), then the model.

    The constants are computed exactly as albumentations' Normalize computes them (float32), so the
    fused graph sees the same numbers the float pipeline feeds the plain graph.
    """

    def __init__(self, model: nn.Module, card: ModelCard):
        super().__init__()
        self.model = model
        mean = np.asarray(card.mean, dtype=np.float32) * np.float32(255.0)
        scale = np.reciprocal(np.asarray(card.std, dtype=np.float32) * np.float32(255.0))
        self.register_buffer("mean", torch.from_numpy(mean).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes UINT8 only as a network input that is immediately cast.
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        return self.model((x - self.mean) * self.scale)


class ExportResult(Result):
    """RUN/export_report.json."""

    model_file: str
    external_data: str | None
    model: str
    opset: int
    exporter: str
    dynamic_batch: bool
    static_batch: int | None
    fuse_preprocess: bool
    input_format: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes_before_simplify: int
    nodes_after_simplify: int
    simplification: dict[str, Any]
    parity: dict[str, Any]
    file_size_bytes: int
    sha256: str
    external_data_sha256: str | None
    weights_sha256: str
    versions: dict[str, str]
    seconds: dict[str, float]


@dataclass(frozen=True)
class ExportPlan:
    """What `export` decided before any torch work: the run, the graph's card (uint8 NHWC when the
    preprocessing is fused) and the validation images parity runs on."""

    run: RunDir
    cfg: ExportSettings
    card: ModelCard  # the checkpoint's
    out_card: ModelCard  # the graph's
    sample: Any  # the validation items parity runs on (edgetl.data)

    @property
    def n(self) -> int:
        return len(self.sample)


def plan_export(run_path: str | os.PathLike, cfg: ExportSettings) -> ExportPlan:
    """Decide what `export` will do, refusing (one EdgetlError) a run it cannot export: no checkpoint, no
    splits.json, an empty validation split. Reads the checkpoint's card and the splits only."""
    from edgetl.data import read_splits

    run = RunDir(run_path)
    run.require(run.weights, hint="run `edgetl finetune` first, or give the run directory it wrote")
    run.require(run.splits, hint="export checks parity on the run's validation images; `edgetl finetune` writes splits.json")
    card = ModelCard.from_safetensors(run.weights)
    _, val = read_splits(run.splits)
    n = min(cfg.parity_images, len(val))
    if n == 0:
        raise ExportError(f"{run.splits}: the validation split is empty", "parity needs real validation images")
    out_card = card.model_copy(update={"input_format": "uint8_nhwc"}) if cfg.fuse_preprocess else card
    return ExportPlan(run=run, cfg=cfg, card=card, out_card=out_card, sample=val.spread(n))


class _Inputs(NamedTuple):
    """The module to export and what parity compares it on."""

    module: nn.Module
    x_graph: np.ndarray  # the images as the graph takes them
    reference: np.ndarray  # PyTorch's logits
    labels: np.ndarray


def export(run_path: str | os.PathLike, cfg: ExportSettings | None = None, events: Events = SILENT) -> ExportResult:
    """Write RUN/model.onnx (fp32, dynamic batch unless `static_batch`) with the card and its form in
    metadata_props, and RUN/export_report.json (the result); the settings go to RUN/settings/export.yaml.
    Raises ExportError (nothing written) when a check fails."""
    from edgetl.io import disk_errors, make_tempdir

    cfg = cfg or ExportSettings()
    plan = plan_export(run_path, cfg)
    run = plan.run
    t_start = time.perf_counter()
    inputs = _load_inputs(plan, events)
    try:
        tmpdir = make_tempdir(run.path, "export")
    except OSError as e:
        raise RunDirError(f"{run.path}: cannot write into the run directory ({e.strerror or e})",
                          "check its permissions and free disk space") from None
    try:
        # a full disk or read-only mount under the private folder is the run's: one line naming the run
        with disk_errors(run.onnx):
            result = _export_checked(plan, inputs, tmpdir, events, t_start)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    record_settings(run.path, "export", cfg)
    return result


def _load_inputs(plan: ExportPlan, events: Events) -> _Inputs:
    from edgetl.data import load_arrays

    events.status("loading the checkpoint")
    model, card = load_trained(plan.run.weights)
    events.status(f"reading {plan.n} validation images")
    x_float, labels = load_arrays(plan.sample, card)
    with torch.inference_mode():
        reference = model(torch.from_numpy(x_float)).float().numpy()
    fused = plan.cfg.fuse_preprocess
    module = FusedPreprocess(model, card).eval() if fused else model
    x_graph = load_arrays(plan.sample, plan.out_card)[0] if fused else x_float
    return _Inputs(module, x_graph, reference, labels)


def _export_checked(plan: ExportPlan, inputs: _Inputs, tmpdir: Path, events: Events, t_start: float) -> ExportResult:
    """Export into `tmpdir`, check, simplify, install RUN/model.onnx and write the report."""
    import onnx

    cfg, run, timings = plan.cfg, plan.run, {}
    events.status(f"exporting '{plan.card.model}' to ONNX opset {cfg.opset}")
    t = time.perf_counter()
    candidate, nodes_before, external = _write_candidate(plan, inputs.module, tmpdir)
    timings["export"] = time.perf_counter() - t

    events.status("checking the graph's inputs and outputs")
    t = time.perf_counter()
    _check_graph(candidate, plan.out_card, cfg.static_batch)
    timings["check"] = time.perf_counter() - t

    events.status(f"parity with PyTorch on {plan.n} validation images (onnxruntime)")
    t = time.perf_counter()
    parity, batch_sizes = _parity(candidate, inputs.x_graph, inputs.reference, inputs.labels, cfg.tolerance)
    timings["parity"] = time.perf_counter() - t
    if not parity["passed"]:
        raise ExportError(
            f"ONNX output differs from PyTorch on {plan.n} validation images of {run.path}: "
            f"max |delta logit| {parity['max_abs_diff']:.3g} ({parity['max_scaled_diff']:.3g} of the logit "
            f"scale, tolerance {cfg.tolerance:g}), "
            f"top-1 agreement {parity['top1_agreement']:.2%}; model.onnx not written",
            "try another opset; if the gap is tiny and expected, raise the tolerance")

    final, nodes_after = candidate, nodes_before
    simplification: dict[str, Any] = {"requested": cfg.simplify, "kept": False}
    if cfg.simplify:
        events.status("simplifying (onnxslim)")
        t = time.perf_counter()
        slim_path, slim_parity, note = _simplify(candidate, tmpdir / "slim" / run.onnx.name, plan.out_card, external,
                                                 cfg.static_batch, inputs.x_graph, inputs.reference, inputs.labels,
                                                 cfg.tolerance)
        timings["simplify"] = time.perf_counter() - t
        if slim_path is not None:
            final, parity = slim_path, slim_parity
            nodes_after = len(onnx.load(str(final), load_external_data=False).graph.node)
            simplification["kept"] = True
        simplification["note"] = note

    events.status("writing model.onnx")
    _install(final, run.onnx)
    result = _result(plan, external, (nodes_before, nodes_after), simplification,
                     {**parity, "batch_sizes": batch_sizes}, timings, t_start)
    result.write(run.export_report)
    return result


def _write_candidate(plan: ExportPlan, module: nn.Module, tmpdir: Path) -> tuple[Path, int, bool]:
    """torch.onnx.export, the card and the fp32 form into metadata_props, saved through the checked writer:
    (the file, its node count, whether its weights went to external data)."""
    import onnx

    cfg, name = plan.cfg, plan.run.onnx.name
    raw = tmpdir / "raw" / name
    raw.parent.mkdir()
    torch_export(module, plan.out_card, raw, cfg.opset, cfg.static_batch)
    proto = onnx.load(str(raw))
    plan.out_card.write_onnx(proto, FP32_FORM)
    external = _initializer_bytes(proto) > cfg.external_data_threshold
    candidate = tmpdir / "plain" / name
    _save(proto, candidate, external)
    return candidate, len(proto.graph.node), external


def _result(plan: ExportPlan, external: bool, nodes: tuple[int, int], simplification: dict[str, Any],
            parity: dict[str, Any], timings: dict[str, float], t_start: float) -> ExportResult:
    import onnx

    from edgetl.io import sha256_file

    run, cfg = plan.run, plan.cfg
    header = onnx.load(str(run.onnx), load_external_data=False)
    data_file = run.onnx.with_name(run.onnx.name + DATA_SUFFIX)
    return ExportResult(
        model_file=run.onnx.name, external_data=data_file.name if external else None, model=plan.card.model,
        opset=cfg.opset, exporter="torch.onnx.export (TorchScript, dynamo=False)",
        dynamic_batch=cfg.static_batch is None, static_batch=cfg.static_batch, fuse_preprocess=cfg.fuse_preprocess,
        input_format=plan.out_card.input_format, inputs=_describe(header.graph.input),
        outputs=_describe(header.graph.output), nodes_before_simplify=nodes[0], nodes_after_simplify=nodes[1],
        simplification=simplification,
        parity={**parity, "images": f"val split (splits.json), {plan.n} spread evenly over it"},
        file_size_bytes=run.onnx.stat().st_size + (data_file.stat().st_size if external else 0),
        sha256=sha256_file(run.onnx), external_data_sha256=sha256_file(data_file) if external else None,
        weights_sha256=sha256_file(run.weights), versions=_versions(),
        seconds={**{k: round(v, 3) for k, v in timings.items()}, "total": round(time.perf_counter() - t_start, 3)},
    )


# -- steps ------------------------------------------------------------------------------------------
def torch_export(module: nn.Module, card: ModelCard, path: Path, opset: int, static_batch: int | None) -> None:
    c, h, w = card.input_size
    batch = static_batch or 2  # 2, not 1: a batch of 1 lets the tracer bake in size-1 broadcasts
    if card.input_format == "uint8_nhwc":
        example = torch.zeros(batch, h, w, c, dtype=torch.uint8)
    else:
        example = torch.zeros(batch, c, h, w)
    dynamic_axes = None if static_batch else {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
    try:
        with warnings.catch_warnings(), _quiet_fds():
            # The legacy exporter announces its own deprecation and timm's traced asserts; neither is the user's.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    except Exception as e:
        text = str(e).strip()
        first = first_line(e)
        op = re.search(r"operator '([\w:.]+)'", text) or re.search(r"\b((?:aten|prim|onnx)::\w+)", text)
        if op:
            raise ExportError(f"the ONNX exporter cannot convert operator '{op.group(1)}' of '{card.model}' "
                              f"at opset {opset}",
                              "try another opset (TensorRT 10.0 parses up to 20), or a model without this "
                              "operator") from None
        raise ExportError(f"torch.onnx.export failed for '{card.model}' at opset {opset} ({first})") from None


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence file descriptors 1 and 2: on failure the exporter's C++ side dumps the whole TorchScript
    graph to stdout, which would bury the one-line error."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _initializer_bytes(proto) -> int:
    return sum(t.ByteSize() for t in proto.graph.initializer)


def _save(proto, path: Path, external: bool) -> None:
    """Save through edgetl's one checked ONNX writer (full onnx.checker before the rename); weights go to
    `<name>.data` beside it (a relative location, so the folder stays movable) when the model is too large
    for one protobuf."""
    from edgetl.export.write import save_checked

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checked(proto, path, ExportError, what="the exported graph", external_data=external,
                 hint="try another opset")


def _check_graph(path: Path, card: ModelCard, static_batch: int | None) -> None:
    """The inferred I/O must be what the card says (`_save` already ran onnx.checker with full shape
    inference on the file)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False), strict_mode=True)
    batch = static_batch or BATCH_DIM
    c, h, w = card.input_size
    want_in = [batch, h, w, c] if card.input_format == "uint8_nhwc" else [batch, c, h, w]
    ios = {d["name"]: d for d in _describe(inferred.graph.input) + _describe(inferred.graph.output)}
    got_in, got_out = ios.get(INPUT_NAME, {}).get("shape"), ios.get(OUTPUT_NAME, {}).get("shape")
    if got_in != want_in or got_out != [batch, card.num_classes]:
        raise ExportError(f"exported graph has input {got_in} and output {got_out}; "
                          f"expected {want_in} and {[batch, card.num_classes]}")


def _ort_logits(path: Path, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Logits for all of `x` through the ONNX Runtime backend (CPU). A static graph gets exact batches (the last
    one padded); a dynamic one is run in chunks and also at batch 1, so both a full and a single-image batch are
    exercised. Returns (logits, the batch sizes that ran)."""
    from edgetl.errors import EdgetlError
    from edgetl.runtime import create_backend

    try:
        with create_backend("onnxruntime", path, device="cpu") as be:
            step = be.fixed_batch or _PARITY_CHUNK
            sizes = {be.fixed_batch or min(step, len(x) - i) for i in range(0, len(x), step)}
            logits = be.logits(x, _PARITY_CHUNK)
            if be.fixed_batch is None:
                # a dynamic graph must give the same first row whatever the batch size
                logits = np.concatenate([logits, be.infer(np.ascontiguousarray(x[:1]))])
                sizes.add(1)
    except EdgetlError as e:
        raise ExportError(f"onnxruntime cannot run the exported graph ({e.message})") from None
    return logits, sorted(sizes)


def _parity(path: Path, x: np.ndarray, reference: np.ndarray, labels: np.ndarray,
            tolerance: float) -> tuple[dict[str, Any], list[int]]:
    got, sizes = _ort_logits(path, x)
    ref = reference if len(got) == len(reference) else np.concatenate([reference, reference[:1]])
    if got.shape != ref.shape:
        raise ExportError(f"exported graph returns logits of shape {got.shape[1:]}, PyTorch {ref.shape[1:]}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    finite = bool(np.isfinite(got).all())
    max_abs = float(diff.max()) if finite else float("inf")
    # float32 rounding grows with the size of the activations: with logits of ~30, PyTorch's own fp32
    # result is ~3e-4 off its fp64 result. So |delta| is judged relative to each image's largest
    # |logit| once that exceeds 1 (below 1 it is the plain absolute difference).
    scale = np.maximum(1.0, np.abs(ref.astype(np.float64)).max(axis=1, keepdims=True))
    max_scaled = float((diff / scale).max()) if finite else float("inf")
    agreement = top1_agreement(got, ref)
    n = len(reference)
    return {
        "n_images": n,
        "max_abs_diff": max_abs,
        "max_scaled_diff": max_scaled,
        "max_abs_logit": float(np.abs(ref).max()),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "top1_agreement": agreement,
        "tolerance": tolerance,
        "torch_top1": top1(reference, labels),
        "onnx_top1": top1(got[:n], labels),
        "passed": bool(agreement == 1.0 and max_scaled <= tolerance),
    }, sizes


def _simplify(src: Path, dst: Path, card: ModelCard, external: bool, static_batch: int | None, x: np.ndarray,
              reference: np.ndarray, labels: np.ndarray, tolerance: float):
    """onnxslim, offline. Returns (path, parity, note), or (None, None, why not kept)."""
    import logging

    import onnx

    try:
        import onnxslim
    except ImportError:
        return None, None, "onnxslim is not installed; graph kept as exported"
    before = onnx.load(str(src), load_external_data=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnxslim").setLevel(logging.ERROR)
            slim = onnxslim.slim(str(src))
    except Exception as e:  # a failed optional pass keeps the checked, unsimplified graph
        return None, None, f"onnxslim failed ({first_line(e)}); graph kept as exported"
    if slim is None:
        return None, None, "onnxslim returned nothing; graph kept as exported"
    if _describe(slim.graph.input) != _describe(before.graph.input) or \
            _describe(slim.graph.output) != _describe(before.graph.output):
        return None, None, "onnxslim changed the inputs or outputs; graph kept as exported"
    card.write_onnx(slim, FP32_FORM)
    _save(slim, dst, external)
    try:
        _check_graph(dst, card, static_batch)
        parity, _ = _parity(dst, x, reference, labels, tolerance)
    except ExportError as e:
        return None, None, f"simplified graph failed a check ({e.message}); graph kept as exported"
    if not parity["passed"]:
        return None, None, (f"simplified graph lost parity (scaled max |delta| {parity['max_scaled_diff']:.3g}, "
                            f"agreement {parity['top1_agreement']:.2%}); graph kept as exported")
    return dst, parity, "onnxslim " + getattr(onnxslim, "__version__", "?")


def _install(src: Path, dst: Path) -> None:
    """Rename the checked file (and its external data) over the run's. Data first: the new graph must
    never point at a missing or older data file; a stale data file from a larger export is removed."""
    data_src = src.with_name(src.name + DATA_SUFFIX)
    data_dst = dst.with_name(dst.name + DATA_SUFFIX)
    has_data = data_src.exists()
    if has_data:
        os.replace(data_src, data_dst)
    os.replace(src, dst)
    if not has_data and data_dst.exists():
        data_dst.unlink()


def _describe(values) -> list[dict[str, Any]]:
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim] if t.HasField("shape") else None
        out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": shape})
    return out


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm

    from edgetl import __version__

    versions = {"edgetl": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return versions
