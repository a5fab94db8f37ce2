"""`edgetl triton`: a Triton Inference Server model repository for a run, so serving at scale uses an existing
server (dynamic batching, many instances, HTTP/gRPC) rather than anything of ours.

OUT/<name>/config.pbtxt      onnxruntime backend, I/O names, dims and data types read from the ONNX graph
OUT/<name>/1/model.onnx     (int8 with kind cpu: the U8S8 CPU form, model.int8.cpu.onnx, that ONNX Runtime
                            runs fast on a CPU; otherwise the TensorRT Q/DQ form)
OUT/<name>/labels.txt        class names, so Triton's classification extension returns labels
OUT/<name>_trt_<engine>/...  one tensorrt model per engine the run has (RUN/engines/<gpu>-trt<ver>/), since an
                             engine only loads on the GPU and TensorRT version it was built with
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from pathlib import Path
from typing import Optional

from pydantic import Field

from edgetl import __version__
from edgetl.choices import EnginePrecisionName, TritonKindName
from edgetl.errors import DeployError, RunDirError
from edgetl.io import atomic_path, write_text
from edgetl.portable.forms import FP32, U8S8, form_for
from edgetl.rundir import RunDir
from edgetl.stage import SILENT, Events, Result, Settings, record_settings

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "config.pbtxt.tmpl"
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# numpy dtype name -> Triton data type (model_config.proto DataType)
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8",
                "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
                "bfloat16": "TYPE_BF16"}


class TritonSettings(Settings):
    """What `edgetl triton` writes."""

    out: Optional[Path] = Field(None, description="model repository folder",
                                json_schema_extra={"default_text": "RUN/triton"})
    precision: EnginePrecisionName = "fp32"
    max_batch: int = Field(8, ge=1, description="max_batch_size, the dynamic batcher's upper bound")
    name: Optional[str] = Field(None, description="model name", json_schema_extra={"default_text": "the run folder's name"})
    kind: TritonKindName = Field("gpu", description="instance kind for the ONNX model")
    queue_delay_us: int = Field(100, ge=0, description="dynamic batching: max queue delay in microseconds")


class TritonResult(Result):
    """The model repository written."""

    path: Path
    models: dict[str, str]  # model name -> Triton backend (onnxruntime, tensorrt), in the order written


def triton(run_path: str | os.PathLike, cfg: TritonSettings, events: Events = SILENT) -> TritonResult:
    """Write (or refresh) the model repository and return what it holds."""
    from edgetl.ship.bundle import graph_io
    from edgetl.card import ModelCard, check_form

    run = RunDir(run_path)
    precision, max_batch, kind, queue_delay_us = cfg.precision, cfg.max_batch, cfg.kind, cfg.queue_delay_us
    # A CPU instance runs ONNX Runtime's CPU kernels, which are fast on U8S8 (the cpu target of quantize),
    # not on the symmetric S8S8 form made for TensorRT.
    form = form_for(precision, "cpu" if kind == "cpu" else "tensorrt")
    onnx_path = run.path / form.file
    run.require(onnx_path, hint=form.hint("RUN") + (" (or use kind gpu for the TensorRT form)" if form is U8S8 else ""))
    card = ModelCard.from_onnx(onnx_path)
    check_form(onnx_path, precision, form.target, hint=f"re-run `{form.command('RUN')}`")
    bad = next((c for c in card.class_names if "\n" in c or "\r" in c), None)
    if bad is not None:  # labels.txt is one class per line: a line break would shift every later label
        raise DeployError(f"{onnx_path}: class name {bad!r} contains a line break, which Triton's labels.txt "
                          "cannot hold", "rename that class folder and fine-tune again")
    io_info = graph_io(onnx_path)
    base = _model_name(cfg.name or run.path.resolve().name)
    path = cfg.out if cfg.out is not None else run.triton_dir
    if path.exists() and not path.is_dir():
        raise DeployError(f"out {path}: is a file, not a model repository folder", "give out a folder name")
    plans = sorted(run.engines_dir.glob(f"*/model.{precision}.plan"))
    for plan in plans:  # before anything is written
        engine_max = _engine_max_batch(plan)
        if engine_max is not None and engine_max < max_batch:
            raise DeployError(f"{plan}: built for batches up to {engine_max}, max_batch is {max_batch}",
                              f"set max_batch {engine_max} or rebuild the engine for a larger batch")

    model = base if precision == FP32 else f"{base}_{precision}"
    trt_models = [(plan, f"{model}_trt_{_model_name(plan.parent.name)}") for plan in plans]
    for name in [model, *(n for _, n in trt_models)]:  # before anything is written
        _check_ours(path / name)

    models: dict[str, str] = {}
    events.status(f"writing {model}")
    _write_model(path / model, model, "onnxruntime", onnx_path, "model.onnx", io_info, card, max_batch,
                 KINDS[kind], queue_delay_us, source=onnx_path.name)
    models[model] = "onnxruntime"
    for plan, trt_model in trt_models:
        events.status(f"writing {trt_model}")
        _write_model(path / trt_model, trt_model, "tensorrt", plan, "model.plan", io_info, card, max_batch,
                     "KIND_GPU", queue_delay_us, source=f"{plan.parent.name}/{plan.name}")
        models[trt_model] = "tensorrt"
    record_settings(run.path, "triton", cfg)
    return TritonResult(path=path, models=models)


# What edgetl writes in a model folder (the model file through io.atomic_path, whose temporaries are hidden).
_OURS = {"config.pbtxt", "labels.txt"}
_OURS_IN_VERSION = {"model.onnx", "model.plan"}


def _check_ours(folder: Path) -> None:
    """Refresh only a model folder edgetl wrote: its config.pbtxt carries edgetl's first line and it holds
    nothing else but edgetl's files. A user's hand-written model is never replaced."""
    if not folder.exists():
        return
    hint = "give another out or name, or move the folder away first"
    if not folder.is_dir():
        raise DeployError(f"{folder}: is a file where the Triton model folder goes", hint)
    config = folder / "config.pbtxt"
    try:
        with config.open("rb") as f:
            ours = f.readline(200).startswith(b"# Triton Inference Server model configuration, written by edgetl ")
    except OSError:
        ours = False
    version = folder / "1"
    entries = [p.name for p in folder.iterdir() if not p.name.startswith(".")] + \
        [f"1/{p.name}" for p in (version.iterdir() if version.is_dir() else []) if not p.name.startswith(".")]
    # Without edgetl's config.pbtxt (Triton can complete a config itself) any file there may be the user's.
    others = [e for e in entries if e != "1" and not (ours and (e in _OURS or e.removeprefix("1/") in _OURS_IN_VERSION))]
    if others:
        why = "holds files edgetl did not write" if ours else "has no config.pbtxt written by edgetl and holds"
        raise DeployError(f"{folder}: {why} ({', '.join(sorted(others)[:3])}), so triton will not replace it", hint)


def _model_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def _engine_max_batch(plan: Path) -> int | None:
    """The engine's largest batch, from the profile its sidecar records (edgetl build and the device
    entry point both write it through portable.engines.make_sidecar), or None where it cannot be read."""
    from edgetl.tensorrt.engine import sidecar_path

    try:
        meta = json.loads(sidecar_path(plan).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    profile_max = (meta.get("profile") or {}).get("max") if isinstance(meta, dict) else None  # [N, C, H, W]
    return int(profile_max[0]) if profile_max else None


def _pbtxt_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_blocks(kind: str, tensors: list[dict], batching: bool, labels: bool) -> str:
    blocks = []
    for t in tensors:
        dtype = TRITON_TYPES.get(t["dtype"])
        if dtype is None:
            raise DeployError(f"tensor '{t['name']}': data type {t['dtype']} has no Triton equivalent")
        dims = t["shape"][1:] if batching else t["shape"]
        dims_text = ", ".join("-1" if d is None else str(d) for d in dims)
        lines = [f"    name: {_pbtxt_string(t['name'])}", f"    data_type: {dtype}", f"    dims: [ {dims_text} ]"]
        if labels:
            lines.append('    label_filename: "labels.txt"')
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]"


def render_config(name: str, backend: str, io_info: dict, card, max_batch: int, instance_kind: str,
                  queue_delay_us: int, model_filename: str, source: str) -> str:
    """config.pbtxt text: dynamic batching when the graph's batch axis is dynamic (max_batch_size 0 otherwise)."""
    batching = all(t["dynamic_batch"] for t in io_info["inputs"] + io_info["outputs"])
    max_batch_size = max_batch if batching else 0
    dynamic = (f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(queue_delay_us)}\n}}" if batching
               else "# no dynamic_batching: the graph has a fixed batch size (export without --static-batch to enable it)")
    labels = card.num_classes == (io_info["output"]["shape"][-1] or -1)
    pre = (f"{card.input_format}, {card.channel_order}, resize {card.resize} + centre crop {card.height}x{card.width}, "
           f"mean {list(card.mean)}, std {list(card.std)}") if card.input_format == "float32_nchw" else \
        f"{card.input_format}: raw RGB pixels, resize {card.resize} + centre crop {card.height}x{card.width} (normalisation is in the graph)"
    values = {
        "edgetl_version": __version__, "source": source, "preprocessing": pre, "name": name, "backend": backend,
        "max_batch_size": max_batch_size, "inputs": _tensor_blocks("input", io_info["inputs"], batching, False),
        "outputs": _tensor_blocks("output", io_info["outputs"], batching, labels), "dynamic_batching": dynamic,
        "instance_count": 1, "instance_kind": instance_kind, "model_filename": model_filename,
        "card_json": _pbtxt_string(json.dumps(card.model_dump(mode="json"), ensure_ascii=False, sort_keys=True)),
    }
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)


def _write_model(folder: Path, name: str, backend: str, model_file: Path, filename: str, io_info: dict, card,
                 max_batch: int, instance_kind: str, queue_delay_us: int, source: str) -> None:
    if not model_file.exists():
        raise RunDirError(f"{model_file}: missing")
    text = render_config(name, backend, io_info, card, max_batch, instance_kind, queue_delay_us, filename, source)
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    with atomic_path(version / filename) as tmp:  # a full disk leaves no truncated model behind
        shutil.copyfile(model_file, tmp)
    write_text(folder / "labels.txt", "\n".join(card.class_names) + "\n")
    write_text(folder / "config.pbtxt", text)  # last: a folder with a config is complete


__all__ = ["TritonResult", "TritonSettings", "render_config", "triton"]
