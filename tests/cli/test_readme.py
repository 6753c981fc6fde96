"""Every command and every option is in README.md, so a user reading it meets everything ``sched`` can do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup

from pgsched.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# Where a command is named: `sched add ...` in text or in an example.
MENTIONED = {" ".join(m.split()) for m in re.findall(r"sched((?: [a-z][a-z-]*)+)", README)}


def _commands(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, TyperGroup):
            found.extend(_commands(command, (*prefix, name)))
        else:
            found.append(((*prefix, name), command))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = _commands(ROOT)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_and_option_is_in_the_readme(path: tuple[str, ...], command: typer.core.TyperCommand) -> None:
    name = " ".join(path)
    assert any(m == name or m.startswith(name + " ") for m in MENTIONED), f"README never shows `sched {name}`"
    for param in command.params:
        if param.param_type_name != "option" or param.hidden or param.name == "help":
            continue
        flag = max(param.opts, key=len)
        assert re.search(rf"{re.escape(flag)}(?![\w-])", README), f"README never mentions sched {name} {flag}"


def test_the_root_options_are_in_the_readme() -> None:
    for flag in ("--debug", "--version"):
        assert re.search(rf"{flag}(?![\w-])", README), f"README never mentions sched {flag}"
