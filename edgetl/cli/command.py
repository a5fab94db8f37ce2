"""`@stage(...)`: a command whose options are its stage's settings.

The options a user gave (not None) become the overrides of the Settings, taken from the call itself, so an option
added to a signature cannot be left out of a hand-written dict: a parameter that is neither a field nor named as
no setting stops the command (and tests/test_cli.py finds it before anyone runs it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterable

from typer.core import TyperCommand

from edgetl.cli.app import app
from edgetl.cli.options import describe

NOT_SETTINGS = frozenset({"run", "config", "ctx"})  # every command's: the run directory, --config, Typer's context


def plain(value: Any) -> Any:
    """An option's value as YAML would hold it: an Enum its value, a Path its text, a list of those."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def overrides(settings: Any, given: Dict[str, Any], not_settings: Iterable[str] = ()) -> Dict[str, Any]:
    """The options given as overrides for load_settings. Not given (None, or a repeatable option given no time)
    is left out, so the --config file or the default holds; False (--no-tar) is given."""
    skip = NOT_SETTINGS | set(not_settings)
    stray = sorted(k for k in given if k not in skip and k not in settings.model_fields)
    if stray:  # a bug here, not the user's: say so rather than drop the option
        raise TypeError(f"options that are no field of {settings.__name__}: {', '.join(stray)}")
    return {k: plain(v) for k, v in given.items() if k not in skip and v is not None and v != [] and v != ()}


def stage(name: str, settings_path: str, *, not_settings: Iterable[str] = ()) -> Callable:
    """Register `body` as the command `name`, whose Settings class is `settings_path` ("module:Class", imported
    only when needed: most stage modules import torch). `body(load, **options)` gets, besides its options,
    `load()`, which returns the settings resolved from --config and the options given; its first parameter is
    hidden from Typer."""
    not_settings = tuple(not_settings)

    def settings() -> Any:
        module, _, attr = settings_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def register(body: Callable) -> Callable:
        signature = inspect.signature(body, eval_str=True)
        params = list(signature.parameters.values())[1:]

        @functools.wraps(body)
        def command(**given: Any) -> Any:
            def load() -> Any:
                from edgetl.stage import load_settings

                cls = settings()
                return load_settings(cls, given.get("config"), overrides(cls, given, not_settings))

            return body(load, **given)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer reads __signature__, not the body's (with `load`)
        cls = type(f"{name.title()}Command", (SettingsCommand,), {"settings": staticmethod(settings)})
        app.command(name, cls=cls)(command)
        return body

    return register


class SettingsCommand(TyperCommand):
    """A command whose option help comes from its Settings model, filled in only when help is shown."""

    settings: Callable[[], Any]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        describe(self.params, self.settings())
        super().format_help(ctx, formatter)
