"""The model card: what a model needs to be fed and read correctly, carried inside every artifact.

It travels as one JSON string under the key ``edgetl.card``: in safetensors metadata, in ONNX
``metadata_props`` and in an engine's sidecar JSON. Every stage reads it from the artifact it
works on, never from a second copy of the settings.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgetl import __version__
from edgetl.errors import FormMismatch, ModelError, first_line
from edgetl.portable.forms import METADATA_FORM, METADATA_PRECISION, Form, form_of_graph, form_of_metadata, mismatch

CARD_KEY = "edgetl.card"

# How the graph input is laid out: normalised float NCHW (the default), or raw uint8 NHWC
# RGB pixels when `export --fuse-preprocess` moved scaling and normalisation into the graph.
InputFormat = Literal["float32_nchw", "uint8_nhwc"]


class ModelCard(BaseModel):
    model: str = Field(description="timm architecture name")
    class_names: list[str]
    input_size: tuple[int, int, int] = Field(description="C, H, W of the network input")
    resize: int = Field(description="shorter side is resized to this, then centre-cropped to H, W")
    interpolation: str = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB"] = "RGB"
    input_format: InputFormat = "float32_nchw"
    weights_sha256: str | None = Field(default=None, description="hash of the fine-tuned tensors")
    source_weights: dict[str, Any] = Field(default_factory=dict, description="where the backbone came from")
    edgetl_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def height(self) -> int:
        return self.input_size[1]

    @property
    def width(self) -> int:
        return self.input_size[2]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, where: str = "model card") -> "ModelCard":
        try:
            return cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as e:
            raise ModelError(f"{where}: the edgetl model card is unreadable: {first_line(e)}") from None

    def metadata(self) -> dict[str, str]:
        return {CARD_KEY: self.to_json()}

    # -- safetensors --------------------------------------------------------------------------
    @classmethod
    def from_safetensors(cls, path: str | os.PathLike) -> "ModelCard":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ModelError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
        if CARD_KEY not in meta:
            raise ModelError(f"{path}: has no edgetl model card", "was it written by `edgetl finetune`?")
        return cls.from_json(meta[CARD_KEY], str(path))

    # -- ONNX ---------------------------------------------------------------------------------
    def write_onnx(self, model_proto: Any, form: Form | None = None) -> None:
        """Set the card, and the graph's `form` (edgetl.portable.forms), in an onnx.ModelProto's metadata_props,
        replacing older ones. Without a form any older form entry is dropped: a graph derived from another
        (quantize starts from model.onnx) must not keep its source's form."""
        values = {CARD_KEY: self.to_json(), **(form.metadata() if form is not None else {})}
        for prop in list(model_proto.metadata_props):
            if prop.key in (CARD_KEY, METADATA_FORM, METADATA_PRECISION):
                model_proto.metadata_props.remove(prop)
        for key, value in values.items():
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value

    @classmethod
    def from_onnx(cls, model: Any) -> "ModelCard":
        """Read the card from an onnx.ModelProto or a path to an .onnx file (weights not loaded). A path that
        parses is then checked against the SHA-256 its run's export or quant report recorded (edgetl.integrity)."""
        where = "ONNX model"
        if isinstance(model, (str, os.PathLike)):
            import onnx

            from edgetl.integrity import recorded_onnx_hashes, verify_onnx

            where = str(model)
            try:
                proto = onnx.load(str(model), load_external_data=False)
            except Exception as e:
                try:
                    record = recorded_onnx_hashes(model)
                except ModelError:
                    record = None
                raise ModelError(f"{where}: not a readable ONNX file ({first_line(e)})",
                                 f"re-run `{record[1]}`" if record else None) from None
            verify_onnx(model)  # every stage opens a run's ONNX file here first: a changed file stops now
            model = proto
        for prop in model.metadata_props:
            if prop.key == CARD_KEY:
                return cls.from_json(prop.value, where)
        raise ModelError(f"{where}: has no edgetl model card in metadata_props", "export it with `edgetl export`")


def onnx_form(model: Any, file_name: str | os.PathLike | None = None, by_name: bool = True) -> Form | None:
    """The form of an ONNX graph (an onnx.ModelProto, or a path: weights not loaded): what its metadata_props
    say, else (`by_name`) what its file name says (older runs, foreign files); None when neither says.
    ModelError for an unreadable file or metadata edgetl does not know."""
    where = str(file_name or "ONNX model")
    if isinstance(model, (str, os.PathLike)):
        import onnx

        where = file_name = str(model)
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:
            raise ModelError(f"{where}: not a readable ONNX file ({first_line(e)})") from None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return form_of_graph(props, str(file_name or "")) if by_name else form_of_metadata(props)
    except ValueError as e:
        raise ModelError(f"{where}: {e}", "re-export it with `edgetl export` (or re-run `edgetl quantize`)") from None


def check_form(path: str | os.PathLike, precision: str, target: str | None = None,
               hint: str | None = None) -> Form | None:
    """The form of the graph at `path`, after refusing (FormMismatch, one line) a graph that is not
    `precision` (nor, for int8 with a `target`, that target's form). A graph whose form is unknown passes."""
    form = onnx_form(path)
    why = mismatch(form, precision, target)
    if why:
        raise FormMismatch(f"{path}: {why}", hint)
    return form
