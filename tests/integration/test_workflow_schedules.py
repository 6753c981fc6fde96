"""Recurring schedules against a real PostgreSQL: ticking, catch-up policies, exactly one job per tick with
many concurrent tickers, and code-declared schedules."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.schedules import build_schedule


def tick(dsn: str) -> int:
    return run_async(dsn, repository.tick_schedules)


def make_due(conn: db.Connection, name: str, ago: timedelta) -> datetime:
    """Pretend no worker ran for ``ago``: move the schedule's next run into the past, onto a whole minute."""
    now = conn.row("SELECT now()")[0]  # type: ignore[index]
    due = (now - ago).replace(second=0, microsecond=0)
    conn.run("UPDATE sched_schedules SET next_run_at = %s WHERE name = %s", (due, name))
    return due


def jobs_of(conn: db.Connection, name: str) -> list[tuple[str, datetime]]:
    rows = conn.rows(
        "SELECT dedupe_key, run_at FROM sched_jobs_all WHERE dedupe_key LIKE %s ORDER BY run_at",
        (f"schedule:{name}:%",),
    )
    return [(r[0], r[1]) for r in rows]


def test_a_new_schedule_waits_for_its_first_tick(dsn: str, conn: db.Connection) -> None:
    assert repository.upsert_schedule(conn, build_schedule("every5", "*/5 * * * *", "t"))
    (found,) = repository.list_schedules(conn)
    assert found["next_run_at"] > datetime.now(UTC) - timedelta(seconds=1)
    assert found["next_run_at"].minute % 5 == 0
    assert tick(dsn) == 0


def test_a_due_tick_enqueues_one_job_and_advances_the_schedule(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(
        conn, build_schedule("hourly", "0 * * * *", "report", queue="reports", payload_json='{"k": 1}')
    )
    due = make_due(conn, "hourly", timedelta(seconds=0)).replace(minute=0)
    conn.run("UPDATE sched_schedules SET next_run_at = %s", (due,))
    assert tick(dsn) == 1
    assert tick(dsn) == 0
    row = conn.row("SELECT task, queue, payload, state::text, run_at FROM sched_jobs_all")
    assert row == ("report", "reports", {"k": 1}, "queued", due)
    (found,) = repository.list_schedules(conn)
    assert found["last_tick"] == due and found["next_run_at"] == due + timedelta(hours=1)


def test_after_an_outage_the_default_is_one_catch_up_job_not_a_flood(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("minutely", "* * * * *", "t"))
    make_due(conn, "minutely", timedelta(hours=3))
    assert tick(dsn) == 1
    ((_, run_at),) = jobs_of(conn, "minutely")
    assert datetime.now(UTC) - run_at < timedelta(minutes=1)


def test_catch_up_all_enqueues_every_missed_tick(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("minutely", "* * * * *", "t", catch_up="all"))
    due = make_due(conn, "minutely", timedelta(minutes=30))
    enqueued = tick(dsn)
    assert enqueued in (31, 32)  # 30 minutes ago to now, inclusive; the minute may turn during the test
    ticks = [run_at for _, run_at in jobs_of(conn, "minutely")]
    assert ticks[0] == due and ticks == [due + timedelta(minutes=i) for i in range(enqueued)]


def test_catch_up_none_skips_missed_ticks(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("yearly", "0 0 1 1 *", "t", catch_up="none"))
    make_due(conn, "yearly", timedelta(days=400))
    assert tick(dsn) == 0
    (found,) = repository.list_schedules(conn)
    assert found["next_run_at"] > datetime.now(UTC)
    assert jobs_of(conn, "yearly") == []


def test_many_concurrent_tickers_enqueue_each_tick_exactly_once(dsn: str, conn: db.Connection) -> None:
    for n in range(5):
        repository.upsert_schedule(conn, build_schedule(f"s{n}", "* * * * *", "t", catch_up="all"))
        make_due(conn, f"s{n}", timedelta(minutes=20))

    async def tickers() -> int:
        conns = [await db.connect_async(dsn) for _ in range(8)]
        try:

            async def ticker(c: db.AsyncConnection) -> int:
                total = 0
                for _ in range(10):
                    total += await repository.tick_schedules(c)
                return total

            return sum(await asyncio.gather(*(ticker(c) for c in conns)))
        finally:
            for c in conns:
                await c.close()

    enqueued = asyncio.run(tickers())
    keys = [r[0] for r in conn.rows("SELECT dedupe_key FROM sched_jobs_all")]
    assert len(keys) == len(set(keys)) == enqueued
    for n in range(5):
        assert len(jobs_of(conn, f"s{n}")) in (21, 22)


def test_replacing_a_schedule_never_refires_a_fired_tick(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("minutely", "* * * * *", "t"))
    make_due(conn, "minutely", timedelta(minutes=5))
    assert tick(dsn) == 1
    assert not repository.upsert_schedule(conn, build_schedule("minutely", "* * * * *", "t2"))
    # The first job finished, so its dedupe key no longer guards the tick: only last_tick does.
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now()")
    (last_tick,) = conn.row("SELECT last_tick FROM sched_schedules")  # type: ignore[misc]
    conn.run("UPDATE sched_schedules SET next_run_at = %s", (last_tick,))
    assert tick(dsn) == 0  # the database refuses a tick not later than the last one fired


def test_code_schedules_are_upserted_without_resetting_or_overriding(dsn: str, conn: db.Connection) -> None:
    specs = [build_schedule("cleanup_tmp", "*/5 * * * *", "cleanup_tmp"), build_schedule("mine", "@daily", "mine")]
    repository.upsert_schedule(conn, build_schedule("mine", "0 3 * * *", "other_task"))
    assert run_async(dsn, lambda c: repository.upsert_code_schedules(c, specs)) == ["cleanup_tmp"]
    schedules = {s["name"]: s for s in repository.list_schedules(conn)}
    assert schedules["cleanup_tmp"]["source"] == "code"
    assert (schedules["mine"]["source"], schedules["mine"]["task"]) == ("cli", "other_task")
    due = make_due(conn, "cleanup_tmp", timedelta(minutes=1))
    assert run_async(dsn, lambda c: repository.upsert_code_schedules(c, specs)) == []
    assert repository.list_schedules(conn)[0]["next_run_at"] == due  # a restart keeps the pending tick
    changed = [build_schedule("cleanup_tmp", "*/10 * * * *", "cleanup_tmp")]
    assert run_async(dsn, lambda c: repository.upsert_code_schedules(c, changed)) == ["cleanup_tmp"]
    assert repository.list_schedules(conn)[0]["next_run_at"] > datetime.now(UTC)


def test_removing_a_schedule(conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("gone", "@hourly", "t"))
    repository.delete_schedule(conn, "gone")
    assert repository.list_schedules(conn) == []
    with pytest.raises(Exception, match="schedule gone not found"):
        repository.delete_schedule(conn, "gone")


def test_a_catch_up_all_schedule_behind_its_last_tick_moves_on_instead_of_sticking(
    dsn: str, conn: db.Connection
) -> None:
    # A next run at or before the last tick fired (from a clock behind the database's) must not stop the
    # schedule for good: the ticks already fired are skipped and the schedule advances past them.
    repository.upsert_schedule(conn, build_schedule("every", "* * * * *", "t", catch_up="all"))
    make_due(conn, "every", timedelta(minutes=3))
    assert tick(dsn) >= 3
    (last_tick,) = conn.row("SELECT last_tick FROM sched_schedules")  # type: ignore[misc]
    conn.run("UPDATE sched_schedules SET next_run_at = %s", (last_tick - timedelta(minutes=1),))
    assert tick(dsn) == 0
    (next_run_at, still_last) = conn.row("SELECT next_run_at, last_tick FROM sched_schedules")  # type: ignore[misc]
    assert next_run_at > still_last == last_tick
