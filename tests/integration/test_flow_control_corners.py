"""The limited claim's priority rule (migration 0014) and its group buckets kept as inserted rows (0015) against a
real PostgreSQL, in corners: a head row another transaction holds, buckets whose rows a clock going back leaves
in the future, concurrent claimers of tasks that never meet, and claims at REPEATABLE READ (docs/protocol.md,
"Fair sharing", "Group rates", "Concurrency limits")."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg
import pytest

from pgsched import db, repository
from pgsched.errors import DatabaseError
from pgsched.models import NewJob


def add(conn: db.Connection, groups: list[str | None], priority: int = 0, task: str = "t") -> list[int]:
    jobs = [NewJob(task=task, queue="q", group=g, priority=priority) for g in groups]
    return [e.id for e in repository.enqueue_many(conn, jobs)]


async def _claim(dsn: str, limit: int, tasks: list[str]) -> list:
    conn = await db.connect_async(dsn)
    try:
        return await repository.claim_jobs(conn, str(uuid.uuid4()), "q", tasks, limit)
    finally:
        await conn.close()


def claim(dsn: str, limit: int = 5, tasks: list[str] | None = None) -> list[int]:
    return [j.id for j in asyncio.run(_claim(dsn, limit, tasks or ["t"]))]


def test_a_full_head_whose_takeable_row_is_held_elsewhere_still_takes_other_jobs(dsn: str, conn: db.Connection) -> None:
    # docs/protocol.md, "Concurrency limits": the limits hold jobs back, nothing else. x (priority 10) fills the
    # head and may start one job; its first is held by another transaction (a bulk action's batch, a cancel), so
    # the claim skips it. y (priority 0) has a free slot and nothing of a higher priority that the claim could
    # take is left (x's one free slot goes to a row it cannot lock; x's other rows are over its cap).
    x = add(conn, ["x"] * 5, priority=10)
    y = add(conn, ["y"] * 2)
    repository.set_queue_concurrency(conn, "q", group_concurrency=1)
    with psycopg.connect(dsn, autocommit=False) as holder:
        holder.execute("SELECT 1 FROM sched_jobs WHERE id = %s FOR UPDATE", (x[0],))
        taken = claim(dsn)
    assert taken, "the claim took nothing though y had a free slot"
    assert set(taken) <= set(x[1:2] + y[:1])


def test_a_group_with_two_rows_in_the_future_is_read_by_its_latest(dsn: str, conn: db.Connection) -> None:
    # A clock that went back leaves an earlier charge's row (not yet swept) in the future again, beside the
    # group's latest one: the bucket is the latest, the claim charges from it, and one row is left in the future.
    add(conn, ["a"] * 4)
    repository.set_queue_group_rate(conn, "q", 0.001, 2)
    conn.run(
        "INSERT INTO sched_group_buckets (queue, group_name, full_at)"
        " VALUES ('q', 'a', now() + interval '500 seconds'), ('q', 'a', now() + interval '10 seconds')"
    )
    # The latest row leaves 1.5 tokens (2 - 0.5): one job, though the earlier row alone would leave 1.99.
    assert len(claim(dsn)) == 1
    rows = conn.rows("SELECT full_at - now() FROM sched_group_buckets WHERE group_name = 'a' AND full_at > now()")
    assert len(rows) == 1 and rows[0][0].total_seconds() > 1400, rows
    assert claim(dsn) == []
    (listed,) = [r for r in repository.list_queues(conn) if r["queue"] == "q"]
    assert listed["group_buckets"] == 1


def test_concurrent_claimers_of_different_tasks_share_a_groups_bucket(dsn: str, conn: db.Connection) -> None:
    # Workers with tasks of their own never pick the same job, so only the bucket can keep them to a group's
    # burst: 8 claimers, each of its own task, at once, over one group of burst 3 that does not refill.
    tasks = [f"t{i}" for i in range(8)]
    for task in tasks:
        add(conn, ["a"] * 3, task=task)
    repository.set_queue_group_rate(conn, "q", 0.0001, 3)
    start = threading.Barrier(len(tasks))
    taken: list[int] = []

    def run(task: str) -> None:
        start.wait()
        taken.extend(claim(dsn, limit=3, tasks=[task]))

    threads = [threading.Thread(target=run, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 3, taken
    assert conn.row("SELECT count(*) FROM sched_group_buckets WHERE full_at > now()") == (1,)


def test_a_claim_at_repeatable_read_is_refused_and_so_is_a_worker(dsn: str, conn: db.Connection) -> None:
    # A claim at REPEATABLE READ reads on a snapshot taken before it waited for the queue's row: it would not see
    # what the claim before it took and charged, and could pass a group's bucket or a limit. The claim refuses
    # to run, and a worker whose transactions default to it refuses to start.
    add(conn, ["a"])
    repository.set_queue_group_rate(conn, "q", 0.0001, 1)
    with psycopg.connect(dsn, autocommit=False) as rr:
        rr.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="needs READ COMMITTED, not repeatable read"):
            rr.execute("SELECT * FROM sched_claim_limited('q', '{t}', 5, %s)", (uuid.uuid4(),))
    assert conn.row("SELECT count(*) FROM sched_jobs WHERE state = 'running'") == (0,)
    (database,) = conn.row("SELECT current_database()")
    conn.run(f"ALTER DATABASE {database} SET default_transaction_isolation = 'repeatable read'")

    async def register() -> None:
        worker = await db.connect_async(dsn)
        try:
            await repository.register_worker(
                worker, str(uuid.uuid4()), "h", 1, ["q"], ["t"], 1, stale_after_s=30, timeout_grace_s=5
            )
        finally:
            await worker.close()

    with pytest.raises(DatabaseError, match=r"need READ COMMITTED, but .* default to repeatable read"):
        asyncio.run(register())
    conn.run(f"ALTER DATABASE {database} RESET default_transaction_isolation")
    assert conn.row("SELECT count(*) FROM sched_workers") == (0,)
