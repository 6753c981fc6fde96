"""Recurring schedules: operator and code-declared upserts, listing, and firing due ticks exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pgsched.db import AsyncConnection, Connection
from pgsched.errors import NotFound
from pgsched.sqlfiles import query

if TYPE_CHECKING:
    from pgsched.schedules import ScheduleSpec

# pgsched.schedules (and croniter with it) is imported where ticks are computed, not here: `sched add` imports
# the repository and must stay fast.


def upsert_schedule(conn: Connection, spec: ScheduleSpec) -> bool:
    """Create or replace an operator's schedule; True if it is new. Its first run is the next tick after the
    database's clock (never the caller's, which may lag behind and leave the schedule before its last tick)."""
    from pgsched.schedules import next_tick

    with conn.transaction():
        now = conn.row(query("ClockNow"))[0]  # type: ignore[index]
        row = conn.row(
            query("ScheduleUpsert"),
            {
                "name": spec.name,
                "cron": spec.cron,
                "tz": spec.tz,
                "task": spec.task,
                "queue": spec.queue,
                "payload": spec.payload_json,
                "catch_up": spec.catch_up,
                "next_run_at": next_tick(spec.cron, spec.tz, now),
            },
        )
    return bool(row and row[0])


def list_schedules(conn: Connection) -> list[dict[str, Any]]:
    """Every schedule with its next run and the last tick it fired."""
    return conn.records(query("ScheduleList"))


def delete_schedule(conn: Connection, name: str) -> None:
    """Remove a schedule, or raise NotFound."""
    if not conn.rows(query("ScheduleDelete"), {"name": name}):
        raise NotFound(f"schedule {name} not found")


async def upsert_code_schedules(conn: AsyncConnection, specs: Sequence[ScheduleSpec]) -> list[str]:
    """Record the schedules that handlers declare in code (``@task(..., cron=...)``); a worker calls this at
    start. Returns the names created or changed; an operator's schedule of the same name is left alone."""
    from pgsched.schedules import next_tick

    if not specs:
        return []
    now = (await conn.row(query("ClockNow")))[0]  # type: ignore[index]
    rows = await conn.rows(
        query("ScheduleUpsertCodeMany"),
        {
            "names": [s.name for s in specs],
            "crons": [s.cron for s in specs],
            "tzs": [s.tz for s in specs],
            "tasks": [s.task for s in specs],
            "queues": [s.queue for s in specs],
            "catch_ups": [s.catch_up for s in specs],
            "next_run_ats": [next_tick(s.cron, s.tz, now) for s in specs],
        },
    )
    return [r[0] for r in rows]


async def tick_schedules(conn: AsyncConnection, limit: int = 100) -> int:
    """Enqueue the due ticks of every schedule and advance them; returns the number of jobs enqueued.

    Safe to call from any number of workers at once: due schedules are locked with SKIP LOCKED, and the fire
    statement only matches a schedule still at the tick that was read, with ticks newer than its last."""
    from pgsched.schedules import due_ticks

    enqueued = 0
    async with conn.transaction():
        for name, cron, tz, catch_up, due_at, last_tick, now in await conn.rows(
            query("ScheduleListDue"), {"limit": limit}
        ):
            ticks, upcoming = due_ticks(cron, tz, catch_up, due_at, now, last_tick)
            row = await conn.row(
                query("ScheduleFire"),
                {"name": name, "due_at": due_at, "ticks": ticks, "next_run_at": upcoming},
            )
            enqueued += row[1] if row else 0
    return enqueued
