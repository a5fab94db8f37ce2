"""The `edgetl` Typer app and its root options; the commands attach themselves from the modules beside it."""

from __future__ import annotations

import typer

from edgetl.presentation.console import console

# rich_markup_mode None: help text is printed as written, so a default in [brackets] and "<stage>" are not eaten
# as markup
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Fine-tune, export, quantize, build and benchmark image classifiers for NVIDIA edge devices.")


def _print_version(value: bool) -> None:
    if value:
        from edgetl import __version__

        console.print(f"edgetl {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, help="print the edgetl version and exit",
                                 callback=lambda value: _print_version(value)),
) -> None:
    pass
