"""The forms an ONNX graph of a run can take, in one table: precision, form name, file name, report key,
bundle manifest key, and the command that makes it.

Both sides read it: the package (export, quantize, build, bench, bundle, triton) and the device script, so
the int8 forms and the precision words are spelled here only. A graph says its own form in its ONNX
`metadata_props` (METADATA_FORM / METADATA_PRECISION, beside the model card); a graph without them (an
older run, a foreign file) falls back to the file-name rule, so old runs keep working.

The two int8 forms are named by what they hold, not by a backend: `qdq-s8s8` (symmetric int8 Q/DQ, what
TensorRT's parser takes) and `qdq-u8s8` (uint8 activations with zero points, int8 weights: fast on CPU
runtimes). The CLI's words ("tensorrt", "cpu", "int8/cpu", "int8_cpu") stay as aliases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

FP32, FP16, INT8 = "fp32", "fp16", "int8"
PRECISIONS = (FP32, FP16, INT8)  # what an ONNX graph or an engine can have baked in
REFERENCE_PRECISION = FP32  # what every other precision is scored against

METADATA_PRECISION = "edgetl.precision"
METADATA_FORM = "edgetl.form"

INT8_TARGETS = ("tensorrt", "cpu")  # quantize's --target words, in the order `--target both` writes them


@dataclass(frozen=True)
class Form:
    """One graph form of a run."""

    name: str  # written into the graph's metadata
    precision: str
    file: str  # its file in the run (and in a bundle)
    report_key: Optional[str]  # its entry in quant_report.json (fp32 is export_report.json's)
    manifest_key: str  # its key in a bundle manifest's "models"
    target: Optional[str]  # quantize's --target word for an int8 form
    title: str  # for messages

    @property
    def stage(self) -> str:
        """The edgetl stage that writes this graph."""
        return "export" if self.precision == FP32 else "quantize"

    def command(self, run: str | None = None) -> str:
        """The edgetl command that writes this graph (`run` is put in where given)."""
        where = f" {run}" if run else ""
        if self.stage == "export":
            return f"edgetl export{where}"
        target = " --target cpu" if self.target == "cpu" else ""  # tensorrt is quantize's default target
        return f"edgetl quantize{where} --precision {self.precision}{target}"

    def hint(self, run: str | None = None) -> str:
        """The hint for a run that lacks this graph."""
        return f"run `{self.command(run)}` first"

    def metadata(self) -> dict[str, str]:
        """What export/quantize write into the graph's metadata_props."""
        return {METADATA_PRECISION: self.precision, METADATA_FORM: self.name}


FP32_FORM = Form("fp32", FP32, "model.onnx", None, "fp32", None, "fp32 graph")
FP16_FORM = Form("fp16", FP16, "model.fp16.onnx", "fp16", "fp16", None, "fp16 graph")
S8S8 = Form("qdq-s8s8", INT8, "model.int8.onnx", "int8/tensorrt", "int8", "tensorrt",
            "TensorRT (S8S8 Q/DQ) form of the int8 graph")
U8S8 = Form("qdq-u8s8", INT8, "model.int8.cpu.onnx", "int8/cpu", "int8_cpu", "cpu",
            "ONNX Runtime (CPU) form of the int8 graph")
FORMS = (FP32_FORM, FP16_FORM, S8S8, U8S8)

# the words the CLI, quant_report.json and the manifest have used for the int8 forms
_ALIASES = {"int8/tensorrt": S8S8, "int8/cpu": U8S8, "int8_cpu": U8S8}
_TARGET_WORDS = {form.target: form for form in FORMS if form.target}  # quantize's --target words


def is_precision(word: object) -> bool:
    return word in PRECISIONS


def check_precision(word: str) -> str:
    """`word` if it is a graph precision, else ValueError naming the ones there are."""
    if word not in PRECISIONS:
        raise ValueError(f"precision {word}: not one of {', '.join(PRECISIONS)}")
    return word


def form_for(precision: str, target: str | None = None) -> Form:
    """The form of `precision` for an int8 `target` ("tensorrt"/None: S8S8, "cpu": U8S8; ignored for fp32/fp16)."""
    check_precision(precision)
    if precision == INT8:
        return U8S8 if target == "cpu" else S8S8
    return FP32_FORM if precision == FP32 else FP16_FORM


def form_named(name: str) -> Form | None:
    """A form by its name or one of the older words for it ("int8/cpu", "int8_cpu", a report or manifest key)."""
    for form in FORMS:
        if name in (form.name, form.report_key, form.manifest_key):
            return form
    return _ALIASES.get(name)


def int8_form(target: "Form | str") -> Form:
    """An int8 form from itself, its name, or quantize's target word ("tensorrt" -> S8S8, "cpu" -> U8S8): the
    quantizer's internals branch on the form, whichever word the user gave."""
    form = target if isinstance(target, Form) else form_named(target) or _TARGET_WORDS.get(target)
    if form is None or form.precision != INT8:
        raise ValueError(f"not an int8 form: {target!r} (use {', '.join(INT8_TARGETS)}, {S8S8.name} or {U8S8.name})")
    return form


def form_of_file(file_name: str) -> Form | None:
    """The file-name rule (for graphs without metadata): model.int8.cpu.onnx -> U8S8, *.int8.onnx -> S8S8,
    *.fp16.onnx -> fp16, model.onnx -> fp32; None for a name that says nothing."""
    name = str(file_name).replace("\\", "/").rsplit("/", 1)[-1]
    for form in (U8S8, S8S8, FP16_FORM):  # longest suffix first: .int8.cpu.onnx also ends in ...onnx
        if name == form.file or name.endswith(form.file[len("model"):]):
            return form
    return FP32_FORM if name == FP32_FORM.file else None


def form_of_metadata(props: Mapping[str, str]) -> Form | None:
    """The form a graph's metadata_props say, None when they say none (an older run, a foreign file).
    ValueError when they are contradictory or unknown: such a graph was edited by hand."""
    name, precision = props.get(METADATA_FORM), props.get(METADATA_PRECISION)
    if name is None and precision is None:
        return None
    form = form_named(name) if name is not None else None
    if form is None or (precision is not None and precision != form.precision):
        raise ValueError(f"its metadata says form {name!r}, precision {precision!r}, which edgetl does not know")
    return form


def form_of_graph(props: Mapping[str, str], file_name: str) -> Form | None:
    """A graph's form: from its metadata, else from its file name (None when neither says)."""
    return form_of_metadata(props) or form_of_file(file_name)


def mismatch(form: Form | None, precision: str, target: str | None = None) -> str | None:
    """Why a graph of `form` cannot serve as `precision` (an int8 `target` "tensorrt"/"cpu" also asks for
    that form); None when it can or its form is unknown."""
    if form is None:
        return None
    if form.precision != precision:
        return f"the graph is {form.precision}, not {precision} (precision lives in the graph)"
    if target is not None and precision == INT8 and form is not form_for(INT8, target):
        return f"it is the {form.title}"
    return None


def graph_mismatch(path: str | os.PathLike, precision: str, target: str | None = None) -> str | None:
    """`mismatch` for a graph file, read with the standard library (the device may have no onnx); None where
    the file cannot be walked: whatever loads it next says what is wrong with it."""
    from .onnxmeta import NotOnnx, metadata_props

    try:
        props = metadata_props(path)
    except (NotOnnx, OSError):
        return None
    return mismatch(form_of_graph(props, os.path.basename(path)), precision, target)


def serving_form(precision: str, device: str, has: Mapping[str, bool] | None = None) -> Form:
    """Which graph serves `precision` on a runtime device ("cpu", "cuda", "tensorrt", ...): an int8 graph on
    a CPU is the U8S8 form where there is one (`has`: form name -> present; None: assume it is), since
    x86 kernels are slow on S8S8; everywhere else the precision's own form."""
    if precision == INT8 and str(device).split(":")[0] == "cpu" and (has is None or has.get(U8S8.name)):
        return U8S8
    return form_for(precision)
