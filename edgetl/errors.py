"""One exception family. Only cli.py turns these into a message and an exit code."""

from __future__ import annotations

from typing import Any


def first_line(e: BaseException) -> str:
    """An exception as one short line: library errors often carry pages of context, or no text at all."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


class EdgetlError(Exception):
    """A failure the user can act on: `message` says what and where, `hint` what to do.

    `exit_code` is the process's exit status when the CLI reports it (1; a subclass may choose its own).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(EdgetlError):
    """The image folder, a label or an image is unusable."""


class ModelError(EdgetlError):
    """A model name, weights file or checkpoint is unusable."""


class RunDirError(EdgetlError):
    """The run directory lacks what a stage needs, or would be overwritten."""


class ExportError(EdgetlError):
    """The ONNX export failed or did not match the PyTorch model."""


class QuantizeError(EdgetlError):
    """Calibration or quantization failed."""


class QuantizeBudgetMissed(QuantizeError):
    """The quantized model was written but stays more than max_drop below fp32 after layer exclusion.
    Its own exit code, so a script (`edgetl quantize RUN && edgetl build RUN`) stops there; `result` holds
    the QuantizeResult quantize() would have returned (the files and quant_report.json are written, marked over
    budget)."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None, result: Any = None):
        super().__init__(message, hint)
        self.result = result


class FormMismatch(ModelError):
    """An ONNX graph is not the precision or form it is asked to serve as (its metadata, or its file name, say so)."""


class BackendUnavailable(EdgetlError):
    """A runtime backend (tensorrt, onnxruntime CUDA, ...) is not installed here."""


class EngineMismatch(EdgetlError):
    """A TensorRT engine was built for another TensorRT version or GPU."""


class DeployError(EdgetlError):
    """Bundling, transport or the device side of a deploy failed."""


class FleetIncomplete(DeployError):
    """A fleet deploy finished but some devices failed: the others' results, fleet.json, fleet.md and fleet.png
    are written. Its own exit code, so a script can tell "some devices failed" from "nothing was done"."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a stage that can say what it kept (`message`). A KeyboardInterrupt, not an
    EdgetlError, so that no `except Exception` on the way out swallows it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
