"""How a command line run ends: one exit code and, on failure, one or two lines on stderr, never a traceback.
Moved as is from cli.py; the commands live in the modules beside it."""

from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

import typer

from edgetl.cli.app import app
from edgetl.presentation.console import err_console


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry. Every way out is one exit code and, on failure, one or two lines on stderr, never
    a traceback: 0 ok, 1 an EdgetlError (or its own exit_code), 2 a usage error, 128+N a signal (130 Ctrl-C)."""
    sys.exit(_run(sys.argv[1:] if argv is None else list(argv)))


def _run(args: List[str]) -> int:
    from edgetl.errors import EdgetlError, Interrupted

    command = typer.main.get_command(app)
    received: dict = {}
    restore = _unwind_on_sigterm(received)
    forget = _keep_interrupts(received)
    try:
        # make_context + invoke rather than app(): Typer's own main turns Ctrl-C into a bare exit code,
        # which would lose what the stage kept, and its error types differ between Typer versions.
        with command.make_context("edgetl", args) as ctx:
            command.invoke(ctx)
        return 0
    except EdgetlError as e:
        _print_error(e.message, e.hint)
        return int(getattr(e, "exit_code", 1) or 1)
    except KeyboardInterrupt as e:
        signum = received.get("signum", signal.SIGINT)
        what = e.message if isinstance(e, Interrupted) else (
            f"edgetl {_command_name(args)} stopped before it finished; nothing half-written was kept and files "
            "it had not yet replaced are unchanged")
        _print_error(f"interrupted ({signal.Signals(signum).name}): {what}", None, label="")
        return 128 + signum
    except _exit_types() as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except _abort_types():
        _print_error("aborted", None)
        return 1
    except _click_error_types() as e:
        return _print_usage_error(e, args)
    except BrokenPipeError:
        # `edgetl ... | head`: the reader left; stop quietly (and keep Python's exit-time flush quiet too).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no real file (captured): nothing to quieten
            pass
        return 1
    except OSError as e:
        # A write that no atomic_path turned into a RunDirError (a library writing its own file): still one line.
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        written = e.filename2 or e.filename  # shutil's copies name the source first, the file written second
        where = os.fsdecode(written) if written else "a file"
        _print_error(f"{where}: cannot write ({e.strerror or e})", "free space on that disk, or write elsewhere")
        return 1
    finally:
        restore()
        forget()


def _print_error(message: str, hint: Optional[str], label: str = "error: ") -> None:
    """Markup off: a message may hold [brackets] (paths, lists) that rich would eat or choke on."""
    from rich.text import Text

    # A path may hold a line break: shown escaped, so the error stays one line.
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    hint = hint and hint.replace("\r", "\\r").replace("\n", "\\n")
    line = Text(label, style="bold red") + Text(message) if label else Text(message, style="bold red")
    err_console.print(line, soft_wrap=True, markup=False, highlight=False)
    if hint:
        err_console.print(f"  hint: {hint}", soft_wrap=True, markup=False, highlight=False)


def _bare_context(args: List[str]):
    """A context for the usage line when the parser raised without one (an option missing its value)."""
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="edgetl")
    sub = getattr(group, "commands", {}).get(_command_name(args))
    return sub.context_class(sub, info_name=_command_name(args), parent=ctx) if sub is not None else ctx


def _print_usage_error(e: Exception, args: List[str]) -> int:
    """Click's message for a usage error (unknown command or option, missing argument, bad value), in two lines."""
    code = int(getattr(e, "exit_code", 2))
    if type(e).__name__ == "NoArgsIsHelpError":  # bare `edgetl` or a group without a command: the help is the answer
        e.show()
        return code
    ctx = getattr(e, "ctx", None) or _bare_context(args)
    usage, where = ctx.get_usage().strip(), ctx.command_path
    _print_error(e.format_message(), None)
    err_console.print(f"  {usage}  (more: {where} --help)", soft_wrap=True, markup=False, highlight=False)
    return code


def _command_name(args: List[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def _keep_interrupts(received: dict):
    """A KeyboardInterrupt that Python raises while the main thread runs a finalizer (a __del__, a weakref
    callback: torch and tempfile run many) is printed as "Exception ignored" and dropped, and the command ran
    on to exit 0 (seen with py-spy: a fine-tune trained 20 epochs past its Ctrl-C). Raise it again in the main
    thread, outside the finalizer. Returns a function that restores the previous hook."""
    import _thread
    import threading

    previous = sys.unraisablehook
    pending: list = []

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # From another thread, a moment later: raised here, it would be dropped again (a hook is a finalizer
            # too). Landing in another finalizer brings it back here, so it is never lost.
            timer = threading.Timer(0.05, _thread.interrupt_main, (received.get("signum", signal.SIGINT),))
            timer.daemon = True
            pending.append(timer)
            timer.start()
            return
        previous(unraisable)

    def forget() -> None:
        for timer in pending:  # the command has ended: nothing may interrupt its exit
            timer.cancel()
        sys.unraisablehook = previous

    sys.unraisablehook = hook
    return forget


def _unwind_on_sigterm(received: dict):
    """SIGTERM unwinds like Ctrl-C (finally blocks and temp-file clean-up run) instead of killing the process
    mid-write; `received` records which signal came. Returns a function that restores the previous handler."""
    import threading

    def handler(signum, frame):
        received["signum"] = signum
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # someone else (a test runner, a supervisor) handles it: leave it alone
        return lambda: None
    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _typer_and_click(*names: str) -> tuple:
    """The classes called `names` in Typer and, where installed, click: Typer 0.2x ships its own copy of click's
    exceptions, older Typer raises click's."""
    import importlib

    found = []
    for module in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(dict.fromkeys(found))


def _exit_types() -> tuple:
    return _typer_and_click("Exit")


def _abort_types() -> tuple:
    return _typer_and_click("Abort")


def _click_error_types() -> tuple:
    return _typer_and_click("ClickException")
