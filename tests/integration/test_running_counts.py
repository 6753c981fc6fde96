"""The count of a limited queue's running jobs (docs/protocol.md, "Where the count starts reading"): from the queue's
floor on, it stays exact while the floor moves past long runs and while runs end every way below and above it;
while a snapshot holds vacuum back it costs the same however many jobs ran since; and the jobs of a claim that
took no lock (its statement started before the limit was set) are counted once it commits, by a full pass at the
latest."""

from __future__ import annotations

import psycopg
import pytest
from support.connections import run_async
from support.marks import NeverFull, drain, held_snapshot, settle_limits, worker_row

from pgsched import db, repository
from pgsched.models import ClaimedJob, NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query

GROUPS = ["a", "b", "c", None]


def _count(conn: db.Connection, full: bool = False) -> dict[str | None, int]:
    """What a claim's count would say now (the function's own moves of the floor rolled back)."""
    conn.raw.execute("BEGIN")
    try:
        rows = conn.rows("SELECT group_name, n FROM sched_queue_running('q', %s, clock_timestamp())", (full,))
    finally:
        conn.raw.execute("ROLLBACK")
    return dict(rows)  # type: ignore[arg-type]


def _running(conn: db.Connection) -> dict[str | None, int]:
    rows = conn.rows(
        "SELECT group_name, count(*)::int FROM sched_jobs WHERE state = 'running' AND queue = 'q' GROUP BY 1"
    )
    return dict(rows)  # type: ignore[arg-type]


def _floor(conn: db.Connection) -> tuple:
    return conn.row("SELECT running_floor, running_below FROM sched_queues WHERE queue = 'q'")  # type: ignore[return-value]


def _claim(dsn: str, worker: str, limit: int, marks: repository.ReadyMarks | None = None) -> list[ClaimedJob]:
    return run_async(dsn, lambda c: repository.claim_jobs(c, worker, "q", ["t"], limit, marks))


def _end(dsn: str, conn: db.Connection, worker: str, job: ClaimedJob, ending: str) -> None:
    """End one run: by its worker's outcome, a cancel, the reaper (its worker stopped beating), or a retry."""
    kinds = {"succeeded": OutcomeKind.SUCCEEDED, "failed": OutcomeKind.FAILED, "released": OutcomeKind.RELEASED}
    if ending == "reaped":
        conn.run("UPDATE sched_workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (worker,))
        assert job.id in run_async(dsn, lambda c: repository.reap_stale(c, wait=True)).requeued
        return
    if ending == "cancelled":
        assert repository.cancel_job(conn, job.id).state == "running"  # asked; the run then stops
        outcome = Outcome(job.id, job.lease, OutcomeKind.CANCELLED)
    elif ending == "retried":
        outcome = Outcome(job.id, job.lease, OutcomeKind.FAILED, error="x", retry_after_s=0.0)
    else:
        outcome = Outcome(job.id, job.lease, kinds[ending], error="x", retryable=False)
    run_async(dsn, lambda c: repository.record_outcomes(c, worker, [outcome]))


ENDINGS = ["succeeded", "failed", "cancelled", "released", "reaped", "retried"]


def _runs(
    dsn: str, conn: db.Connection, worker: str, marks: repository.ReadyMarks, owners: list[str]
) -> list[ClaimedJob]:
    """One run for each of ``owners``, in every group: one claim (from positions once ``marks`` has claimed),
    whose runs are then handed to their owners (the reaper takes all of a worker's runs)."""
    repository.enqueue_many(conn, [NewJob(task="t", queue="q", group=GROUPS[i % 4]) for i in range(len(owners))])
    runs = sorted(_claim(dsn, worker, len(owners), marks), key=lambda j: j.id)
    for run, owner in zip(runs, owners, strict=True):
        conn.run("UPDATE sched_jobs SET worker_id = %s WHERE id = %s", (owner, run.id))
    return runs


@pytest.mark.parametrize("where", ["below the floor", "above the floor"])
def test_the_count_stays_exact_while_the_floor_moves_and_runs_end_every_way(
    dsn: str, conn: db.Connection, where: str
) -> None:
    repository.set_queue_concurrency(conn, "q", max_running=10_000, group_concurrency=5_000)
    settle_limits(conn)
    drainer = worker_row(conn)
    marks = NeverFull()
    # One run per way of ending, each on a worker of its own (the reaper takes a worker's runs), in every group.
    owners = [worker_row(conn) for _ in ENDINGS]
    with held_snapshot(dsn):
        runs = _runs(dsn, conn, drainer, marks, owners) if where == "below the floor" else []
        floors = []
        for _ in range(3):
            # Claims of 200 from positions, each run ending before the next claim: every claim walks the entries
            # the previous ones left, until the walk passes 500 and the floor moves.
            repository.enqueue_many(conn, [NewJob(task="t", queue="q", group=GROUPS[i % 4]) for i in range(700)])
            assert drain(dsn, drainer, marks, 200, "q") == 700
            floors.append(_floor(conn))
            assert _count(conn) == _count(conn, full=True) == _running(conn)
        assert floors[0][0] < floors[1][0] < floors[2][0]  # the floor moved in each round
        if where == "above the floor":
            runs = _runs(dsn, conn, drainer, marks, owners)
        floor, below = _floor(conn)
        assert set(below) == ({r.id for r in runs} if where == "below the floor" else set())
        assert sum(_running(conn).values()) == len(ENDINGS)
        for worker, run, ending in zip(owners, runs, ENDINGS, strict=True):
            _end(dsn, conn, worker, run, ending)
            assert _count(conn) == _count(conn, full=True) == _running(conn), ending
        # The runs given back (released, reaped, retried) are claimed again, above the floor: counted once, though
        # their ids are still in running_below.
        back = {e: r.id for r, e in zip(runs, ENDINGS, strict=True) if e in ("released", "reaped", "retried")}
        # (The released one keeps its place in claim order, behind the worker's position: a full pass takes it.)
        assert {j.id for j in _claim(dsn, drainer, 10, marks)} == {back["reaped"], back["retried"]}
        assert _floor(conn) == (floor, below)
        assert _count(conn) == _count(conn, full=True) == _running(conn)
        marks.rewind()
        assert [j.id for j in _claim(dsn, drainer, 10, marks)] == [back["released"]]
        assert _count(conn) == _count(conn, full=True) == _running(conn)
        # A new limit on a queue that had one keeps the floor (every claim took the lock); one on a queue that had
        # none puts it back at the beginning (see the next test).
        kept = _floor(conn)
        repository.set_queue_concurrency(conn, "q", max_running=9_999, set_group_concurrency=False)
        assert _floor(conn) == kept and kept[0] is not None


def _count_buffers(conn: db.Connection, full: bool) -> int:
    """Shared buffers one count touches (EXPLAIN of the function counts its statements' too)."""
    conn.raw.execute("BEGIN")
    try:
        ((plan,),) = conn.rows(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM sched_queue_running('q', %s, clock_timestamp())",
            (full,),
        )
    finally:
        conn.raw.execute("ROLLBACK")
    return plan[0]["Plan"]["Shared Hit Blocks"] + plan[0]["Plan"].get("Shared Read Blocks", 0)  # type: ignore[index]


def test_the_count_costs_the_same_however_many_jobs_ran_while_a_snapshot_holds_vacuum_back(
    dsn: str, conn: db.Connection
) -> None:
    repository.set_queue_concurrency(conn, "q", max_running=1_000)
    settle_limits(conn)
    worker = worker_row(conn)
    marks = NeverFull()
    counts, full_counts = [], []
    # A worker's session soon runs the function's statements by generic plans (planned once, without the
    # values): this one does from the start, planning them in its first two calls.
    conn.run("SET plan_cache_mode = force_generic_plan")
    _count_buffers(conn, full=False), _count_buffers(conn, full=True)
    # Three long runs, below the floor once it moves.
    repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(3)])
    assert len(_claim(dsn, worker, 3)) == 3
    with held_snapshot(dsn):
        for round in range(1, 5):
            repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(2_500)])
            assert drain(dsn, worker, marks, 250, "q") == 2_500
            if round in (2, 4):
                counts.append(_count_buffers(conn, full=False))
                full_counts.append(_count_buffers(conn, full=True))
    # A count from the beginning (a full pass, and every count before the floor) walks the entry of every run
    # since the horizon: the 5,000 runs between the two measures cost it about a hundred pages. From the floor it
    # walks the runs of the last few claims: the same pages after 10,000 runs as after 5,000.
    assert full_counts[1] > full_counts[0] + 50, full_counts
    assert counts[1] <= counts[0] + 15, counts
    assert _count(conn) == {None: 3} and len(_floor(conn)[1]) == 3


def _finish(dsn: str, worker: str, rows: list[tuple]) -> None:
    outcomes = [Outcome(r[0], r[6], OutcomeKind.SUCCEEDED) for r in rows]  # (id, ..., lease at 6)
    run_async(dsn, lambda c: repository.record_outcomes(c, worker, outcomes))


def test_the_runs_of_a_claim_that_took_no_lock_are_counted_once_it_commits(dsn: str, conn: db.Connection) -> None:
    worker = worker_row(conn)
    marks = NeverFull()
    params = repository.claim_params("q", ["t"], 3, worker)
    with held_snapshot(dsn):
        # A plain claim on its own connection, its transaction still open when the limit is set: it saw no limit
        # and took no lock, and its three runs are visible to no count until it commits.
        repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(800)])
        with psycopg.connect(dsn) as stale:
            early = stale.execute(query("JobClaim"), params).fetchall()
            assert len(early) == 3
            repository.set_queue_concurrency(conn, "q", max_running=200)
            # Claims of 200 (the three are not counted yet), each walking the entries of the runs before it: the
            # walk gets long, but the floor stays at the beginning for 60 s after the limit was set.
            assert drain(dsn, worker, marks, 200, "q") == 797
            assert _floor(conn) == (None, [])
        # Committed: counted, and the next claim takes only the free slots.
        assert _count(conn) == {None: 3} == _running(conn)
        repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(800)])
        taken = _claim(dsn, worker, 500, marks)
        assert len(taken) == 197
        _finish(dsn, worker, [(j.id, 0, 0, 0, 0, 0, j.lease) for j in taken])
        assert drain(dsn, worker, marks, 200, "q") == 603
        _finish(dsn, worker, early)

        # Such a claim that commits after the floor moved (here: the limit set again, and an hour passed as far as
        # the rule knows) is not counted by claims from positions, until a full pass counts it and puts it below
        # the floor.
        repository.set_queue_concurrency(conn, "q", max_running=None)
        repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(3)])
        with psycopg.connect(dsn) as stale:
            late = stale.execute(query("JobClaim"), params).fetchall()
            repository.set_queue_concurrency(conn, "q", max_running=200)
            settle_limits(conn)
            repository.enqueue_many(conn, [NewJob(task="t", queue="q") for _ in range(800)])
            assert drain(dsn, worker, marks, 200, "q") == 800
            assert _floor(conn)[0] is not None
        assert _running(conn) == {None: 3} and _count(conn) == {} and _count(conn, full=True) == {None: 3}
        repository.enqueue_many(conn, [NewJob(task="t", queue="q")])
        assert len(_claim(dsn, worker, 1)) == 1  # a full pass
        assert {r[0] for r in late} <= set(_floor(conn)[1])
        assert _count(conn) == {None: 4} == _running(conn)
