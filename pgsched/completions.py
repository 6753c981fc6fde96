"""Render sched's bash, zsh and fish completion scripts with Typer's own completion machinery.

The scripts are thin: at each Tab the shell runs ``sched`` with ``_SCHED_COMPLETE`` set, and the command
tree answers, so new commands and options complete without regenerating anything.
Regenerate the committed copies with ``python -m pgsched.completions``."""

from __future__ import annotations

import sys
from pathlib import Path

PROG_NAME = "sched"
COMPLETE_VAR = "_SCHED_COMPLETE"
# File names each shell looks for: bash-completion loads by command name, zsh wants _name on $fpath.
FILE_NAMES = {"bash": "sched.bash", "zsh": "_sched", "fish": "sched.fish"}
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "completions"


def render(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish), ending with a newline."""
    from typer._completion_shared import get_completion_script

    if shell not in FILE_NAMES:
        raise ValueError(f"unsupported shell {shell!r}")
    return get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def enable_runtime_completion() -> None:
    """Let the running CLI answer completion requests (the app is built without Typer's install options)."""
    from typer.completion import completion_init

    completion_init()


def stale(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """The committed scripts in ``folder`` that differ from a fresh rendering (or are missing)."""
    out = []
    for shell, name in FILE_NAMES.items():
        path = folder / name
        if not path.is_file() or path.read_text() != render(shell):
            out.append(path)
    return out


def write(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Write every script into ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shell, name in FILE_NAMES.items():
        path = folder / name
        path.write_text(render(shell))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """``python -m pgsched.completions [--check] [FOLDER]``: write the scripts, or with --check list stale ones."""
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    folder = Path(rest[0]) if rest else DEFAULT_FOLDER
    if check:
        outdated = stale(folder)
        for path in outdated:
            sys.stderr.write(f"stale: {path}\n")
        return 1 if outdated else 0
    for path in write(folder):
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
