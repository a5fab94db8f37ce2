"""The `edgetl` command line: one thin command per stage. Logic lives in the stage modules.

- app.py: the Typer app and its root options (--version);
- run.py: `main` and how a run ends (exit codes, one-line errors, Ctrl-C and SIGTERM);
- options.py: every option, declared once, its help read from the stage's Settings model;
- command.py: `@stage`, a command whose given options become its Settings overrides;
- train.py, convert.py, ship.py: the commands.
"""

# Importing them attaches their commands to `app`, in this order in `edgetl --help`.
from edgetl.cli import train, convert, ship  # noqa: F401,I001
from edgetl.cli.app import app
from edgetl.cli.command import overrides
from edgetl.cli.run import _run, main

__all__ = ["app", "main", "overrides", "_run"]
