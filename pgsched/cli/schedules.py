"""``sched schedule add|list|remove``: recurring jobs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pgsched.cli import core
from pgsched.cli.options import JsonOutput, Payload, QueueName, group, print_json
from pgsched.settings import load_settings

commands = group("schedule", "Recurring jobs: enqueue a task at each tick of a cron expression.")


@commands.command("add")
def schedule_add(
    name: Annotated[str, typer.Argument(help="Schedule name (replaces a schedule of that name).")],
    task: Annotated[str, typer.Argument(help="Task to enqueue at each tick.")],
    cron: Annotated[str, typer.Option("--cron", help="Cron expression, e.g. '*/5 * * * *' or @daily.")],
    payload: Payload = None,
    queue: QueueName = "default",
    tz: Annotated[str, typer.Option("--tz", help="Time zone the expression is read in (IANA name).")] = "UTC",
    catch_up: Annotated[
        str,
        typer.Option("--catch-up", help="Ticks missed while no worker ran: latest (one job), all, or none."),
    ] = "latest",
    as_json: JsonOutput = False,
) -> None:
    """Create or replace a schedule; workers enqueue one job per tick."""
    settings = load_settings()
    spec = core.schedules.build_schedule(
        name,
        cron,
        task,
        queue=queue,
        payload_json=core.jobspec.read_payload_argument(payload, settings.max_payload_bytes),
        tz=tz,
        catch_up=catch_up,
    )
    with core.connect(settings) as conn:
        created = core.repository.upsert_schedule(conn, spec)
        found = next(s for s in core.repository.list_schedules(conn) if s["name"] == spec.name)
    if as_json:
        print_json({**core.render.schedule_json(found), "created": created})
    else:
        sys.stdout.write(f"{spec.name}\n")
        sys.stderr.write(f"{'created' if created else 'replaced'}; next run at {found['next_run_at'].isoformat()}\n")


@commands.command("list")
def schedule_list(as_json: JsonOutput = False) -> None:
    """List schedules with their next run."""
    with core.connect(load_settings()) as conn:
        schedules = core.repository.list_schedules(conn)
    if as_json:
        print_json([core.render.schedule_json(s) for s in schedules])
    else:
        core.render.print_schedules(schedules)


@commands.command("remove")
def schedule_remove(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Remove a schedule (jobs it already enqueued stay)."""
    core.schedules.check_schedule_name(name)
    with core.connect(load_settings()) as conn:
        core.repository.delete_schedule(conn, name)
    sys.stderr.write(f"removed schedule {name}\n")
