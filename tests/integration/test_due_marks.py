"""A worker's promotions of due deferred jobs read each queue from where its last pass left it while vacuum is
held back (docs/protocol.md, "Where a promotion starts reading"): they step over the dead entries of jobs
promoted since the oldest snapshot, and a full pass still finds what a position passed over."""

from __future__ import annotations

import time

import psycopg
import pytest
from support.marks import index_buffers

from pgsched import db, repository
from pgsched.models import NewJob
from pgsched.sqlfiles import query
from tests.support.connections import run_async


class Held(repository.DueMarks):
    """Positions as while vacuum is held back: a full pass is never cheap and never comes on its own."""

    CHEAP_S = 0.0
    FULL_MIN_S = FULL_MAX_S = 3600.0


def _promote(dsn: str, marks: repository.DueMarks | None, limit: int = 5000) -> int:
    return run_async(dsn, lambda c: repository.promote_due(c, limit, marks))


def _deferred(conn: db.Connection) -> set[int]:
    return {r[0] for r in conn.rows("SELECT id FROM sched_jobs_all WHERE state = 'queued' AND deferred")}


def _add_due(conn: db.Connection, count: int, queue: str = "default") -> list[int]:
    """Deferred jobs that fall due a moment after they are added (as a delay or a retry's backoff runs out)."""
    jobs = repository.enqueue_many(conn, [NewJob(task="t", queue=queue, delay_s=0.2) for _ in range(count)])
    time.sleep(0.3)
    return [job.id for job in jobs]


def _deferred_scan_buffers(dsn: str, marks: repository.DueMarks | None) -> int:
    """Shared buffers the deferred index scans of one promotion touch (EXPLAIN ANALYZE, rolled back)."""
    since = marks.positions(float("-inf")) if marks is not None else None
    params = {
        "limit": 5000,
        "queues": None if since is None else list(since),
        "froms": None if since is None else list(since.values()),
    }
    return index_buffers(dsn, query("JobPromoteDue"), params, "sched_jobs_deferred")


@pytest.mark.slow
def test_promotions_step_over_the_jobs_promoted_while_a_snapshot_holds_vacuum_back(
    dsn: str, conn: db.Connection
) -> None:
    with psycopg.connect(dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM sched_jobs_all")  # the snapshot: no row version after it can be removed
        marks = Held()
        for _ in range(4):
            _add_due(conn, 5_000)
            assert _promote(dsn, marks) == 5_000
        _add_due(conn, 100)
        from_positions = _deferred_scan_buffers(dsn, marks)
        full_pass = _deferred_scan_buffers(dsn, None)
        holder.rollback()
    # The full pass walks the 20,000 dead entries of the promoted jobs twice (the skip scan that finds the queue,
    # then the queue's due rows), visiting their rows in the table; the pass from the position starts at the last
    # pass's end and reads the index pages and the rows of the 100 jobs it promotes.
    assert full_pass > 5 * from_positions, (from_positions, full_pass)
    assert from_positions < 250, (from_positions, full_pass)


def test_a_due_job_behind_a_position_is_promoted_by_the_next_full_pass(dsn: str, conn: db.Connection) -> None:
    marks = Held()
    first = _add_due(conn, 2)
    assert _promote(dsn, marks) == 2  # a full pass: the queue gets a position at the statement's now()
    assert marks.positions(0.0) is not None
    # A retry whose transaction began long before it committed: due 10 s ago, deferred, behind the position.
    late = repository.enqueue(conn, NewJob(task="t", delay_s=60.0)).id
    conn.run("UPDATE sched_jobs SET run_at = now() - interval '10 seconds' WHERE id = %s", (late,))
    on_time = _add_due(conn, 1)
    assert _promote(dsn, marks) == 1
    assert _deferred(conn) == {late}
    assert _promote(dsn, None) == 1  # a full pass reads the queue from its beginning
    assert _deferred(conn) == set()
    assert not set(first + on_time) & _deferred(conn)


def test_a_queue_with_more_due_jobs_than_a_pass_takes_goes_on_from_the_last_promoted(
    dsn: str, conn: db.Connection
) -> None:
    marks = Held()
    ids = _add_due(conn, 7)
    assert [_promote(dsn, marks, limit=3) for _ in range(4)] == [3, 3, 1, 0]
    assert _deferred(conn) == set()
    assert len(ids) == 7


def test_queues_found_by_a_full_pass_are_read_from_their_positions(dsn: str, conn: db.Connection) -> None:
    marks = Held()
    _add_due(conn, 1, queue="a")
    _add_due(conn, 1, queue="b")
    conn.run(
        "INSERT INTO sched_jobs (queue, task, run_at, deferred) VALUES ('c', 't', now() + interval '1 hour', true)"
    )
    assert _promote(dsn, marks) == 2
    since = marks.positions(0.0)
    assert since is not None and sorted(since) == ["a", "b", "c"]  # c has only future jobs: it is known all the same
    _add_due(conn, 2, queue="c")
    assert _promote(dsn, marks) == 2
    assert len(_deferred(conn)) == 1  # the job an hour ahead
