"""What every ``fleetrl`` command module shares: the stderr console and the one way of failing (``error: ...`` on
stderr, exit code 2)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def fail(msg: str) -> None:
    """Print ``error: msg`` and exit with code 2 (a usage or input error, named by the message)."""
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
