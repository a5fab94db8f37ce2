"""RUN/quant_report.json: one entry per precision/target ("int8/tensorrt", "int8/cpu", "fp16"), each written by
the quantization that made its model file and merged with the others. One key per fact: an entry's accuracy is
`top1`; reports written before that also carried it as `int8_top1` / `fp16_top1`, which reading drops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgetl.choices import Int8FormName
from edgetl.errors import QuantizeError, first_line
from edgetl.metrics import PairedDrop
from edgetl.portable.forms import form_for
from edgetl.rundir import RunDir
from edgetl.stage import Result

_LEGACY_TOP1 = ("int8_top1", "fp16_top1")  # the same number as `top1`, under the names older reports used
_FIX = "move it away (edgetl quantize writes a new one) or restore it"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodTried(_Part):
    top1: float
    cache_hit: bool
    same_ranges_as: Optional[str] = None  # an earlier method that gave byte-identical ranges (not re-scored)


class OtherScoring(_Part):
    """The same int8 model run the other way (exact Q/DQ vs this CPU's fused kernels), for comparison."""
    scoring: Literal["exact", "fused"]
    top1: float
    top1_agreement: float


class Sensitivity(_Part):
    """Leave-one-out: the top-1 with every quantized node but `node` quantized."""
    node: str
    top1_if_float: float
    gain: float  # points over the fully quantized model
    kl_if_float: Optional[float] = None  # mean KL(fp32 || model) of the softmaxes: the search's ranking (lower first)


class Excluded(_Part):
    """A node kept in float by the exclusion search, and what it bought."""
    node: str
    gain: float
    top1_after: float
    drop_after: float


class GraphSummary(_Part):
    """What check_graph counted in a Q/DQ graph."""
    quantize_linear: int
    dequantize_linear: int
    quantized_layers: int
    float_layers: List[str]
    quantized_adds: int
    adds_one_input_quantized: int
    quantized_pools: int


class Parity(_Part):
    max_abs_logit_delta: float
    tolerance: float
    top1_agreement: float
    min_agreement: float


class QatRun(_Part):
    """Quantization-aware training after the layer search missed max_drop: the post-training (PTQ) graph and the
    QAT graph side by side, scored on the same images the same way. The entry's own fields describe the graph
    written to `model_file`: the QAT one when `kept` (it scored at least as high as PTQ's), else PTQ's."""
    library: str  # what did the fake quantization, with its version
    epochs: int
    lr: float
    batch_size: int
    train_images: int
    minutes: float
    train_log: List[Dict[str, Any]] = []  # per epoch: loss, top-1 (fake-quantized, augmented), seconds
    fake_quantized_modules: int
    trained_in_float: List[str] = []  # quantized graph nodes no module carries a fake quantizer for
    kept: bool
    ptq_top1: float
    ptq_drop: float
    ptq_paired: Optional[PairedDrop] = None
    ptq_model_sha256: str
    top1: float
    drop: float
    top1_agreement: float
    paired: Optional[PairedDrop] = None
    within_max_drop: bool
    # the QAT weights in float, on the same images: what the extra training alone gave, apart from int8
    float_top1: Optional[float] = None


class _Entry(Result):
    """The facts every entry has. `top1`/`drop` are None only for an fp16 model this CPU cannot run."""

    precision: str
    target: str
    model_file: str
    model_sha256: str
    source_model_sha256: str
    fp32_top1: float
    top1: Optional[float]
    drop: Optional[float]  # (fp32_top1 - top1) in points
    within_max_drop: Optional[bool] = None
    over_budget: Optional[bool] = None
    max_drop: Optional[float] = None
    method: Optional[str] = None
    calib_size: Optional[int] = None
    calib_hash: Optional[str] = None
    excluded: List[Excluded] = []
    paired: Optional[PairedDrop] = None  # the drop image by image: McNemar's p-value, per-class top-1
    eval_n: int
    eval_data: str
    seconds: float

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in _LEGACY_TOP1):
            data = dict(data)
            legacy = [data.pop(k) for k in _LEGACY_TOP1 if k in data]
            data.setdefault("top1", legacy[0])
        return data


class Int8Entry(_Entry):
    precision: Literal["int8"] = "int8"
    target: Int8FormName
    top1: float
    drop: float
    placement: Dict[str, Any]  # which rule placed (or withheld) Q/DQ, counted
    top1_agreement: float  # share of images whose top-1 class equals fp32's
    # How top1/top1_agreement were computed: "exact" (Q/DQ arithmetic, the TensorRT form) or "fused" (this CPU's
    # int8 kernels, the cpu form); None in older reports, which scored every form fused.
    scoring: Optional[Literal["exact", "fused"]] = None
    scoring_how: Optional[str] = None
    cpu_isa: Optional[str] = None  # the int8 instruction set of the CPU that scored (and quantized) it
    reduce_range: Optional[bool] = None  # 7-bit weights (cpu form on x86 without VNNI)
    weights: Optional[str] = None  # weight format: int8, "int8 7-bit" or uint8 (cpu form, edgetl.quantize.graph)
    other_scoring: Optional[OtherScoring] = None
    sensitivity_images: Optional[int] = None  # how many scoring images ranked the layers
    percentile: Optional[float] = None
    methods_tried: Dict[str, MethodTried]
    calib_source: str
    calib_cache: str
    sensitivity: List[Sensitivity] = []
    structure: GraphSummary
    qat: Optional[QatRun] = None  # absent in reports written before QAT, and when PTQ met max_drop


class Fp16Entry(_Entry):
    precision: Literal["fp16"] = "fp16"
    target: Literal["any"] = "any"
    kept_fp32_ops: List[str]
    parity: Optional[Parity] = None
    parity_ok: Optional[bool] = None
    cpu_runnable: bool
    cpu_note: Optional[str] = None


QuantEntry = Annotated[Union[Int8Entry, Fp16Entry], Field(discriminator="precision")]


class QuantReport(Result):
    """The whole of RUN/quant_report.json."""

    edgetl_version: str = ""
    model: str = "model.onnx"
    entries: Dict[str, QuantEntry] = {}


def entry_key(entry: Int8Entry | Fp16Entry) -> str:
    """The report key of an entry: "int8/tensorrt", "int8/cpu" or "fp16"."""
    return form_for(entry.precision, getattr(entry, "target", None)).report_key


def read_report(run_path: str | os.PathLike) -> QuantReport:
    """RUN/quant_report.json (empty when absent); QuantizeError with one line if it is unreadable or not a
    quant report."""
    from edgetl.io import read_json

    path = RunDir(run_path).quant_report
    if not path.exists():
        return QuantReport()
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise QuantizeError(f"{path}: not readable JSON ({first_line(e)})", _FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise QuantizeError(f"{path}: not an edgetl quant report (no \"entries\" object)", _FIX)
    try:
        return QuantReport.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise QuantizeError(f"{path}: not an edgetl quant report ('{where}': {err['msg']})", _FIX) from None


def merge_report(run_path: str | os.PathLike, entries: list[Int8Entry | Fp16Entry]) -> Path:
    """Write `entries` into RUN/quant_report.json, keeping the other precisions' and targets' entries."""
    from edgetl import __version__

    report = read_report(run_path)
    merged = dict(report.entries)
    merged.update({entry_key(e): e for e in entries})
    return QuantReport(edgetl_version=__version__, model="model.onnx", entries=merged).write(
        RunDir(run_path).quant_report)
