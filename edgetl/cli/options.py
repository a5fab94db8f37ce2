"""Every command-line option, declared once.

An option that sets a stage setting is `setting(...)`: its parameter is named as the Settings field, and its help
(the field's description and default) is read from the Settings model when help is shown (`describe`), so a
default lives only in the model. Options several commands share are module-level objects (the groups below),
attached to each command's signature; Typer builds a fresh click parameter from them per command. Options that
are no setting (--config, --out of finetune, RUN) are declared here too.
"""

from __future__ import annotations

import math
from gettext import gettext as _
from pathlib import Path
from typing import Any, Iterable, Optional

import typer

from edgetl.choices import DIST_TIMEOUT_MAX, IMG_SIZE_MAX, IMG_SIZE_MIN, SEED_MAX


def setting(*flags: str, **kwargs: Any) -> Any:
    """An option for the Settings field its parameter is named after. Default None: not given, so the --config
    file or the field's default holds. No help here: it comes from the field (`describe`)."""
    assert "help" not in kwargs, "a setting's help is its field's description"
    return typer.Option(None, *flags, **kwargs)


def _positive_seconds(value: Optional[float], most: float = math.inf) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and 0 < value <= most):  # nan passes every `<` test
        raise typer.BadParameter(f"{value}: give a number of seconds > 0" + (f" and <= {most:g}" if most < math.inf else ""))
    return value


# -- config: every command ----------------------------------------------------------------------------------------
CONFIG = typer.Option(None, "--config", dir_okay=False,
                      help="YAML file of settings (e.g. RUN/settings/<command>.yaml); options given here win")


def run_argument(holds: str = "") -> Any:
    """The run directory a command works on (positional RUN); `holds` says what it must hold, where that helps."""
    return typer.Argument(..., help="run directory" + (f" ({holds})" if holds else ""))


# -- no settings: where finetune writes, and how ------------------------------------------------------------------
FINETUNE_OUT = typer.Option(..., "--out", "-o", file_okay=False, help="run directory to write")
RESUME = typer.Option(False, "--resume", help="continue an interrupted run in --out")
OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing run directory")
DEMO_OUT = typer.Option(Path("runs/demo"), "--out", help="where the demo writes its data and runs")

# -- precision: which model file (eval, quantize, build, bundle, deploy, triton) ---------------------------------
PRECISION = setting("--precision")

# -- device: where a model runs (finetune, eval, bench, deploy) ---------------------------------------------------
DEVICE = setting("--device")

# -- data: images to score on (eval, bench, quantize) and how many at once ------------------------------------------
DATA = setting("--data")
BATCH_SIZE = setting("--batch-size", min=1)
MAX_IMAGES = setting("--max-images")

# -- timing: benchmark rows (bench, deploy; threads: bench, quantize) ---------------------------------------------
WARMUP = setting("--warmup", min=0)
ITERATIONS = setting("--iterations", min=1)
DURATION = setting("--duration", callback=lambda v: _positive_seconds(v))
THREADS = setting("--threads", min=1)

# -- training: shared by finetune and demo (and quantize's seed) ---------------------------------------------------
EPOCHS = setting("--epochs")
IMG_SIZE = setting("--img-size", min=IMG_SIZE_MIN, max=IMG_SIZE_MAX)
SEED = setting("--seed", min=0, max=SEED_MAX)
STRATEGY = setting("--strategy")
DIST_TIMEOUT = setting("--dist-timeout", callback=lambda v: _positive_seconds(v, DIST_TIMEOUT_MAX))


# -- help, from the Settings model --------------------------------------------------------------------------------
def default_text(field: Any) -> str:
    """A field's default as help shows it: on/off, a comma list, a number without trailing zeros; where the
    default is None, what None means (the field's json_schema_extra "default_text"), else nothing."""
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if value is None:
        return str(extra.get("default_text", ""))
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_help(field: Any) -> str:
    """The field's description and its default, in the words click and Typer use for their own defaults."""
    text = default_text(field)
    note = "[" + _("default: {default}").format(default=text) + "]" if text else ""
    return " ".join(part for part in (field.description or "", note) if part)


def describe(params: Iterable[Any], settings: Any) -> None:
    """Fill in the help of each click parameter that is a field of `settings` (called only when help is shown:
    a Settings module may import torch, which a usage error or a run of another command should not wait for)."""
    for param in params:
        field = settings.model_fields.get(param.name)
        if field is not None:
            param.help = field_help(field)
