"""The two consoles every renderer prints on: stdout for results, stderr for errors."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)
