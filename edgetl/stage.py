"""The shape every stage has: `stage(run, cfg, events) -> Result`.

- `cfg` is a `Settings` model of the stage: loadable from YAML (`load_settings`), command-line options winning,
  and written into the run directory as it was resolved (`record_settings`, RUN/settings/<stage>.yaml), so
  `edgetl <stage> RUN --config RUN/settings/<stage>.yaml` repeats a step exactly.
- `Result` is a pydantic model that is also the JSON written to disk: one key per fact.
- `Events` is how a stage reports progress; it draws nothing. The presentation layer (edgetl.presentation)
  implements it with rich; tests and library callers use the silent default.

Library code names settings by their field name (`device`), never by a command-line flag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgetl.errors import EdgetlError, first_line


class Settings(BaseModel):
    """A stage's settings. Unknown keys are refused, so a misspelt YAML key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class Result(BaseModel):
    """What a stage found and wrote. `model_dump(mode="json")` is exactly the file on disk."""

    model_config = ConfigDict(extra="forbid")

    def write(self, path: str | os.PathLike) -> Path:
        from edgetl.io import write_json

        write_json(Path(path), self.model_dump(mode="json"))
        return Path(path)

    @classmethod
    def read(cls: type[R], path: str | os.PathLike) -> R:
        from edgetl.io import read_json

        try:
            return cls.model_validate(read_json(Path(path)))
        except ValidationError as e:
            raise EdgetlError(f"{path}: not a {cls.__name__} file ({_validation_line(e)})") from None


S = TypeVar("S", bound=Settings)
R = TypeVar("R", bound=Result)


class Events:
    """What a stage tells whoever watches it. Every method is a no-op here: a stage run from library code or a
    test is silent. Subclass and override what you draw (edgetl.presentation.RichEvents does, for the CLI)."""

    def message(self, text: str) -> None:
        """A line worth printing as is (what was done, what was found)."""

    def warning(self, text: str) -> None:
        """Something the user should know that does not stop the stage."""

    def status(self, text: str) -> None:
        """What the stage is doing now (a spinner's text); replaced by the next status."""

    def progress(self, task: str, done: int, total: int | None) -> None:
        """A counted task (one bar per `task` name). `done == total` ends it."""

    def record(self, kind: str, data: dict[str, Any]) -> None:
        """A row the stage produced as it went (kind 'epoch': one training epoch; 'bench': one benchmark row)."""


SILENT = Events()


def load_settings(cls: type[S], path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> S:
    """Settings from the YAML file `path` (if any), then every override that is not None (an option not given on
    the command line is None). A bad file or value is one EdgetlError naming the setting."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise EdgetlError(f"{path}: a settings file must be a YAML mapping")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = getattr(value, "value", value)  # an Enum from the CLI is its plain string
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise EdgetlError(f"setting {_validation_line(e)}") from None


# A settings file is a few lines; these bounds only stop a hostile or mistaken file (/dev/zero, a YAML alias
# bomb, 20,000 nested brackets) before it costs minutes, all memory or a RecursionError.
SETTINGS_MAX_BYTES = 1 << 20
SETTINGS_MAX_DEPTH = 50
SETTINGS_MAX_ALIASES = 100
SETTINGS_MAX_VALUES = 100_000  # scalars, lists and mappings counted as the aliases expand them


def read_yaml(path: str | os.PathLike) -> Any:
    """A settings file's YAML, within the bounds above; anything else is one EdgetlError saying what."""
    try:
        with open(path, "rb") as f:
            raw = f.read(SETTINGS_MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgetlError(f"{path}: cannot read settings ({first_line(e)})") from None
    hint = "a settings file is a short YAML mapping of setting: value"
    if len(raw) > SETTINGS_MAX_BYTES:
        raise EdgetlError(f"{path}: cannot read settings (larger than {SETTINGS_MAX_BYTES >> 20} MiB)", hint)
    try:
        # The parser's events come without recursion, so depth and aliases are counted before anything is built.
        depth = aliases = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > SETTINGS_MAX_DEPTH:
                    raise EdgetlError(f"{path}: cannot read settings (nested deeper than {SETTINGS_MAX_DEPTH} "
                                      "levels)", hint)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > SETTINGS_MAX_ALIASES:
                    raise EdgetlError(f"{path}: cannot read settings (more than {SETTINGS_MAX_ALIASES} YAML "
                                      "aliases)", hint)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EdgetlError(f"{path}: cannot read settings ({first_line(e)})") from None
    stack, seen = [data], 0
    while stack:  # aliases share objects: count what validation would walk through, expanded
        value = stack.pop()
        seen += 1
        if seen > SETTINGS_MAX_VALUES:
            raise EdgetlError(f"{path}: cannot read settings (more than {SETTINGS_MAX_VALUES:,} values, YAML "
                              "aliases expanded)", hint)
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return data


def record_settings(run_path: str | os.PathLike, stage: str, cfg: Settings) -> Path:
    """Write the resolved settings of `stage` to RUN/settings/<stage>.yaml (atomically)."""
    from edgetl.io import write_text
    from edgetl.rundir import RunDir

    path = RunDir(run_path).settings_file(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, cfg.to_yaml())
    return path


def _validation_line(e: ValidationError) -> str:
    """The first error as `'field': why (got value)`: the value only where it is one short scalar not already in
    the message (a YAML typo, a bad list item), and without pydantic's "Value error, " prefix."""
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40 and str(value) not in msg:
        msg += f" (got {value!r})"
    return f"'{where}': {msg}"
