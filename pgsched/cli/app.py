"""The ``sched`` app: the root options, the command groups it is built from, and ``main``, the one place that
turns errors into an ``Error:`` line and an exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Annotated

import typer

import pgsched
from pgsched.cli import bulk, core, jobs, ops, queues, schedules, worker
from pgsched.completions import enable_runtime_completion
from pgsched.errors import DatabaseUnavailable, SchedError

HELP = "A PostgreSQL-backed job queue: add jobs, run workers, watch and maintain the queue."
# In the order ``sched --help`` lists them.
GROUPS = (jobs.commands, bulk.commands, worker.commands, queues.commands, schedules.commands, ops.commands)
COMPLETE_VAR = "_SCHED_COMPLETE"

_debug = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"sched {pgsched.__version__}\n")
        raise typer.Exit()


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (passwords redacted).")] = False,
    # Eager, so that it runs before the check that a command was given.
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema", help="Schema of the sched installation [SCHED_SCHEMA, or public].", show_default=False
        ),
    ] = None,
) -> None:
    """A PostgreSQL-backed job queue: add jobs, run workers, watch and maintain the queue."""
    _debug["on"] = debug
    if schema is not None:
        # Through the environment, so that the settings and any worker process started from here see it too.
        os.environ["SCHED_SCHEMA"] = schema


def build(groups: Iterable[typer.Typer] = GROUPS) -> typer.Typer:
    """The app made of these command groups (a group without a name adds its commands at the top level)."""
    root = typer.Typer(
        name="sched",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    root.callback()(_root)
    for group in groups:
        root.add_typer(group)
    return root


app = build()


def _group_of(name: str) -> typer.Typer | None:
    for group in GROUPS:
        if group.info.name == name:
            return group
        if group.info.name is None and any(
            (c.name or c.callback.__name__.replace("_", "-")) == name  # type: ignore[union-attr]
            for c in group.registered_commands
        ):
            return group
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """The app with only the group of the command that ``argv`` names: building every command's parameters
    costs a one-shot ``sched add`` more than its own work. The whole app serves ``--help``, completion and
    mistakes."""
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    group = _group_of(name) if name is not None and COMPLETE_VAR not in os.environ else None
    return app if group is None else build([group])


def main() -> None:
    """Run the CLI; every SchedError becomes one ``Error:`` line on stderr and its exit code."""
    code = 0
    if COMPLETE_VAR in os.environ:  # a shell asking for completions (see completions/)
        enable_runtime_completion()
    try:
        result = app_for(sys.argv[1:])(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SchedError as exc:
        _report(exc, _with_hint(exc))
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        code = exc.exit_code
        _report(exc, exc.format_message())
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("Aborted.\n")
        code = 130
    except Exception as exc:  # a bug: still one line, with the traceback behind --debug
        _report(exc, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        code = 1
    sys.exit(code)


def _with_hint(exc: SchedError) -> str:
    if isinstance(exc, DatabaseUnavailable) and "SCHED_DATABASE_URL" not in exc.message:
        return f"{exc.message} (check SCHED_DATABASE_URL)"
    return exc.message


def _report(exc: BaseException, message: str) -> None:
    redact = core.db.redact
    if _debug["on"]:
        import traceback  # only here: it costs sched --help a tenth of its start-up

        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    line = " ".join(message.split())
    sys.stderr.write(redact(f"Error: {line}") + "\n")
