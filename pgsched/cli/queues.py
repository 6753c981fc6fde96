"""``sched queue pause|resume|limit|list``: queue controls shared by all workers."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pgsched.cli import core
from pgsched.cli.options import JsonOutput, QueueArgument, group, print_json
from pgsched.settings import load_settings

commands = group(
    "queue", "Queue controls shared by all workers: pause, rate limits, backlog cap, concurrency limits, fair sharing."
)


@commands.command("pause")
def queue_pause(name: QueueArgument) -> None:
    """Stop every worker from claiming jobs of QUEUE (running jobs finish)."""
    _set_paused(name, True)


@commands.command("resume")
def queue_resume(name: QueueArgument) -> None:
    """Let workers claim jobs of QUEUE again."""
    _set_paused(name, False)


def _set_paused(name: str, paused: bool) -> None:
    core.models.check_queue(name)
    with core.connect(load_settings()) as conn:
        core.repository.set_queue_paused(conn, name, paused)
    sys.stderr.write(f"queue {name} {'paused' if paused else 'resumed'}\n")


@commands.command("limit")
def queue_limit(
    name: QueueArgument,
    rate: Annotated[
        Optional[str], typer.Option("--rate", help="Most jobs started per time across all workers: 100/s, 30/m, none.")
    ] = None,
    burst: Annotated[
        Optional[int],
        typer.Option("--burst", min=1, help="Jobs that may start at once after a pause [one second's worth]."),
    ] = None,
    max_backlog: Annotated[
        Optional[int], typer.Option("--max-backlog", min=1, help="Refuse adds while this many jobs are queued.")
    ] = None,
    max_running: Annotated[
        Optional[int],
        typer.Option("--max-running", help="Most running jobs of the queue across all workers (0: no limit)."),
    ] = None,
    group_concurrency: Annotated[
        Optional[int],
        typer.Option("--group-concurrency", help="Most running jobs per group (0: no limit)."),
    ] = None,
    group_rate: Annotated[
        Optional[str],
        typer.Option("--group-rate", help="Most jobs started per time per group across all workers: 10/s, 0: none."),
    ] = None,
    group_burst: Annotated[
        Optional[int],
        typer.Option("--group-burst", help="Jobs a group may start at once after a pause [one second's worth]."),
    ] = None,
    fair: Annotated[
        Optional[bool],
        typer.Option(
            "--fair/--no-fair", help="Share claims between groups in turns [on: for a queue whose jobs have groups]."
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every limit of the queue.")] = False,
) -> None:
    """Set or remove QUEUE's global rate limit (a token bucket), backlog cap, concurrency limits, group rates and
    fair sharing."""
    core.models.check_queue(name)
    limits = core.admin.QueueLimits.parse(
        rate,
        burst,
        max_backlog,
        clear,
        max_running=max_running,
        group_concurrency=group_concurrency,
        group_rate=group_rate,
        group_burst=group_burst,
        fair=fair,
    )
    with core.connect(load_settings()) as conn:
        core.admin.set_queue_limits(conn, name, limits)
    sys.stderr.write(f"queue {name} updated\n")


@commands.command("list")
def queue_list(as_json: JsonOutput = False) -> None:
    """List queues with their pause state, rate limit, bucket level, backlog cap, concurrency limits, group rate,
    fair sharing and load."""
    with core.connect(load_settings()) as conn:
        queues = core.repository.list_queues(conn)
    if as_json:
        print_json(queues)
    else:
        core.render.print_queue_settings(queues)
