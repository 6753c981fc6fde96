"""Options shared by several commands, declared once so that twin commands cannot drift apart, and the few
things every command does alike: load settings, refuse bad input, print JSON."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from pgsched.errors import InvalidInput

JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
QueueOption = Annotated[Optional[str], typer.Option("--queue", "-Q", help="Queue name.", show_default=False)]
QueueName = Annotated[str, typer.Option("--queue", "-Q", help="Queue name.")]
QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="Queue name.")]
Payload = Annotated[
    Optional[str], typer.Option("--payload", "-p", help="JSON object: inline, a file path, or - for stdin.")
]
Interval = Annotated[str, typer.Option("--interval", help="Dashboard refresh interval.")]


def group(name: str | None = None, help: str | None = None) -> typer.Typer:
    """A Typer for one command group; without a name its commands join the root (see app.py)."""
    return typer.Typer(name=name, help=help, no_args_is_help=name is not None, rich_markup_mode=None)


def usage(message: str) -> InvalidInput:
    """The error for input the command refuses: exit 2, nothing written."""
    return InvalidInput(message)


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(value, default=str) + "\n")
