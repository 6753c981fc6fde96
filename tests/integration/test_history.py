"""Succeeded jobs move into the history, whose slots cleanup empties whole (docs/design.md, "History and
cleanup"): nothing is lost to a truncation, a slot holding a later job or held by a reader stays, the edges of
deleted jobs go with them, and --exact keeps retention to the row."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from pgsched import admin, db, repository
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.repository import history
from tests.support.connections import run_async

DAY = 86_400.0


def _finish(dsn: str, count: int, queue: str = "default", after: list[int] | None = None) -> list[int]:
    """Add ``count`` jobs, claim and record them as succeeded through the repository, as a worker does."""
    worker = str(uuid.uuid4())

    async def body(conn: db.AsyncConnection) -> list[int]:
        jobs = await repository.claim_jobs(conn, worker, queue, ["t"], count)
        await repository.record_outcomes(
            conn, worker, [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED, result='{"n": 1}') for j in jobs]
        )
        return [j.id for j in jobs]

    return run_async(dsn, body)


def _age(conn: db.Connection, ids: list[int], days: float) -> None:
    conn.run(
        "UPDATE sched_job_history SET finished_at = now() - make_interval(secs => %s) WHERE id = ANY(%s)",
        (days * DAY, ids),
    )


def _ids(conn: db.Connection, table: str) -> set[int]:
    return {r[0] for r in conn.rows(f"SELECT id FROM {table}")}


def test_a_success_moves_the_job_into_the_current_slot(dsn: str, conn: db.Connection) -> None:
    added = [repository.enqueue(conn, NewJob(task="t")).id for _ in range(3)]
    assert sorted(_finish(dsn, 3)) == added
    assert _ids(conn, "sched_jobs") == set()
    assert conn.rows("SELECT DISTINCT slot, state::text FROM sched_job_history") == [(0, "succeeded")]
    job = repository.get_job(conn, added[0])
    assert (job["state"], job["result"], job["attempt"]) == ("succeeded", {"n": 1}, 1)


def test_cleanup_empties_whole_slots_past_the_retention(dsn: str, conn: db.Connection) -> None:
    for _ in range(5):
        repository.enqueue(conn, NewJob(task="t"))
    old = _finish(dsn, 5)
    _age(conn, old, 2)
    dry = admin.cleanup(conn, DAY, 100, dry_run=True)
    assert (dry.would_delete, dry.succeeded, dry.slots_emptied) == (5, 5, 1)
    assert _ids(conn, "sched_job_history") == set(old)  # a dry run writes nothing
    report = admin.cleanup(conn, DAY, 100)
    # Slot 0 held a job older than an eighth of the retention: slot 1 takes new rows, and slot 0 is emptied.
    assert (report.deleted, report.succeeded, report.slots_emptied) == (5, 5, 1)
    assert _ids(conn, "sched_job_history") == set()
    assert conn.row("SELECT current_slot FROM sched_history") == (1,)
    repository.enqueue(conn, NewJob(task="t"))
    assert conn.rows("SELECT slot FROM sched_job_history WHERE id = ANY(%s)", (_finish(dsn, 1),)) == [(1,)]


def test_a_slot_with_a_later_job_stays_until_exact_deletes_the_old_ones(dsn: str, conn: db.Connection) -> None:
    for _ in range(4):
        repository.enqueue(conn, NewJob(task="t"))
    old, recent = _finish(dsn, 3), _finish(dsn, 1)
    _age(conn, old, 2)
    report = admin.cleanup(conn, DAY, 100)
    assert (report.deleted, report.slots_emptied) == (0, 0)  # slot 0 moved on, but holds a job of today
    assert _ids(conn, "sched_job_history") == set(old + recent)
    assert admin.cleanup(conn, DAY, 100, dry_run=True, exact=True).would_delete == 3
    exact = admin.cleanup(conn, DAY, 2, exact=True)  # batches of 2: the loop goes on until one comes back short
    assert (exact.deleted, exact.succeeded) == (3, 3)
    assert _ids(conn, "sched_job_history") == set(recent)


def test_the_edges_of_emptied_jobs_go_with_them(dsn: str, conn: db.Connection) -> None:
    parent = repository.enqueue(conn, NewJob(task="t")).id
    child = repository.enqueue(conn, NewJob(task="t", after=[parent])).id
    _finish(dsn, 1)
    assert repository.get_job(conn, child)["state"] == "queued"  # released by its parent's success in the history
    _finish(dsn, 1)
    assert repository.get_job(conn, child)["depends_on"] == [parent]
    _age(conn, [parent, child], 2)
    assert admin.cleanup(conn, DAY, 100).deleted == 2
    assert conn.row("SELECT count(*) FROM sched_job_deps") == (0,)


def test_a_job_added_after_a_succeeded_one_counts_it_as_done(dsn: str, conn: db.Connection) -> None:
    parent = repository.enqueue(conn, NewJob(task="t")).id
    _finish(dsn, 1)
    child = repository.enqueue(conn, NewJob(task="t", after=[parent]))
    assert repository.get_job(conn, child.id)["state"] == "queued"


def test_a_completion_in_flight_is_never_truncated(dsn: str, conn: db.Connection) -> None:
    """A worker's success that read slot 0 as current and has not committed when cleanup moves the slot on and
    empties slot 0: the truncation waits for the slot's lock, gives up after 0.5 s, and the job stays."""
    old = [repository.enqueue(conn, NewJob(task="t")).id]
    _finish(dsn, 1)
    _age(conn, old, 2)
    late = repository.enqueue(conn, NewJob(task="t")).id
    worker = str(uuid.uuid4())
    claimed = run_async(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], 1))
    with psycopg.connect(dsn) as completing:
        completing.execute(
            "SELECT * FROM sched_finish_succeeded(%s::uuid, %s, %s, NULL)", (worker, [late], [claimed[0].lease])
        )
        report = admin.cleanup(conn, DAY, 100)  # completing holds slot 0 open
        assert report.slots_emptied == 0
        completing.commit()
    assert _ids(conn, "sched_job_history") == {old[0], late}
    assert repository.get_job(conn, late)["state"] == "succeeded"


def test_a_slot_a_reader_holds_is_left_for_the_next_cleanup(dsn: str, conn: db.Connection) -> None:
    repository.enqueue(conn, NewJob(task="t"))
    old = _finish(dsn, 1)
    _age(conn, old, 2)
    reader = psycopg.connect(dsn)
    reader.execute("SELECT count(*) FROM sched_jobs_all")  # a report in a transaction holds every slot
    released = threading.Timer(4.0, reader.rollback)
    released.start()
    try:
        assert admin.cleanup(conn, DAY, 100).slots_emptied == 0
    finally:
        released.join()
        reader.close()
    assert admin.cleanup(conn, DAY, 100).slots_emptied == 1
    assert _ids(conn, "sched_job_history") == set()


def test_rotation_waits_for_an_empty_slot(dsn: str, conn: db.Connection) -> None:
    """The next slot still holds jobs (a long retention): the current one keeps taking new rows."""
    repository.enqueue(conn, NewJob(task="t"))
    kept = _finish(dsn, 1)
    conn.run("UPDATE sched_job_history SET slot = 1 WHERE id = %s", (kept[0],))  # slot 1 holds a job
    repository.enqueue(conn, NewJob(task="t"))
    old = _finish(dsn, 1)
    _age(conn, old, 2)
    found, _ = history.slots(conn)
    assert [s.number for s in found if s.current] == [0]
    assert admin.cleanup(conn, DAY, 100).slots_emptied == 0
    assert conn.row("SELECT current_slot FROM sched_history") == (0,)


@pytest.mark.parametrize("exact", [False, True])
def test_a_dry_run_counts_what_the_cleanup_then_deletes(dsn: str, conn: db.Connection, exact: bool) -> None:
    for _ in range(6):
        repository.enqueue(conn, NewJob(task="t"))
    first, second = _finish(dsn, 3), _finish(dsn, 3)
    _age(conn, first, 3)
    _age(conn, second[:2], 2)
    dry = admin.cleanup(conn, DAY, 100, dry_run=True, exact=exact)
    done = admin.cleanup(conn, DAY, 100, exact=exact)
    assert dry.would_delete == done.deleted == (5 if exact else 0)
