"""A dedupe key stays held while its job runs: a new job with the same (queue, key) is deduplicated onto the
running one, whether it comes from ``Client.enqueue``, ``Client.enqueue_many`` or a schedule's tick."""

from __future__ import annotations

import uuid
from datetime import timedelta

from support.connections import run_async

from pgsched import db, repository
from pgsched.client import Client
from pgsched.schedules import build_schedule


def claim_all(dsn: str, task: str = "t") -> list[int]:
    """Claim every ready job of ``task`` for a new worker, so they are running; returns their ids."""

    async def main(conn: db.AsyncConnection) -> list[int]:
        return [job.id for job in await repository.claim_jobs(conn, str(uuid.uuid4()), "default", [task], 100)]

    return run_async(dsn, main)


def live_with_key(conn: db.Connection, key: str) -> list[tuple[int, str]]:
    return conn.rows(
        "SELECT id, state::text FROM sched_jobs_all WHERE dedupe_key = %s AND state IN ('waiting', 'queued', 'running')"
        " ORDER BY id",
        (key,),
    )


def test_enqueue_with_the_key_of_a_running_job_returns_that_job(dsn: str, conn: db.Connection) -> None:
    with Client(dsn) as client:
        first = client.enqueue("t", key="invoice-7")
        assert claim_all(dsn) == [first.id]
        again = client.enqueue("t", key="invoice-7")
    assert again == (first.id, True)
    assert live_with_key(conn, "invoice-7") == [(first.id, "running")]


def test_enqueue_many_with_the_key_of_a_running_job_returns_that_job(dsn: str, conn: db.Connection) -> None:
    with Client(dsn) as client:
        first = client.enqueue("t", key="invoice-7")
        assert claim_all(dsn) == [first.id]
        added = client.enqueue_many([{"task": "t", "key": "invoice-7"}, {"task": "t", "key": "invoice-8"}])
    assert added[0] == (first.id, True)
    assert not added[1].deduplicated
    assert live_with_key(conn, "invoice-7") == [(first.id, "running")]
    assert live_with_key(conn, "invoice-8") == [(added[1].id, "queued")]


def test_a_schedule_tick_whose_job_is_still_running_adds_no_second_job(dsn: str, conn: db.Connection) -> None:
    repository.upsert_schedule(conn, build_schedule("minutely", "* * * * *", "t", catch_up="all"))
    now = conn.row("SELECT now()")[0]  # type: ignore[index]
    tick = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    key = "schedule:minutely:" + tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    # A run of that tick is under way (added before the schedule's row last moved, say by a restored backup).
    with Client(dsn) as client:
        running = client.enqueue("t", key=key)
    assert claim_all(dsn) == [running.id]
    conn.run("UPDATE sched_schedules SET next_run_at = %s, last_tick = NULL", (tick,))

    async def fire(aconn: db.AsyncConnection) -> int:
        return await repository.tick_schedules(aconn)

    enqueued = run_async(dsn, fire)
    # Every tick from the running one to now fired; only the running one's key was held.
    assert live_with_key(conn, key) == [(running.id, "running")]
    fired = conn.row("SELECT count(*) FROM sched_jobs_all WHERE dedupe_key LIKE %s", ("schedule:minutely:%",))[0]  # type: ignore[index]
    assert enqueued == fired - 1 >= 5
