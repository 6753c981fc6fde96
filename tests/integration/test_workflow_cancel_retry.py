"""Cancel and retry against a real PostgreSQL: transitive cancellation, cancellation requests to a running
job's worker (NOTIFY and the polling fallback), fresh attempt budgets, and dependencies on retry."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from support.connections import run_async

from pgsched import bulk, db, repository
from pgsched.errors import NotFound, WrongState
from pgsched.models import NewJob, Outcome


def add(conn: db.Connection, **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task="t", **fields)).id  # type: ignore[arg-type]


def start(dsn: str, worker: str, limit: int = 10) -> list:
    return run_async(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], limit))


def finish(dsn: str, worker: str, claimed: list, kind: str, error: str | None = None) -> None:
    outcomes = [Outcome(j.id, j.lease, kind, error=error, retryable=False) for j in claimed]
    run_async(dsn, lambda c: repository.record_outcomes(c, worker, outcomes))


def retry_matching(conn: db.Connection, states: list[str], queue: str) -> bulk.BulkReport:
    return bulk.perform(conn, "retry", bulk.build_filter("retry", states=states, queue=queue))


def state(conn: db.Connection, job_id: int) -> str:
    return repository.get_job(conn, job_id)["state"]


def fail_all(dsn: str) -> None:
    worker = str(uuid.uuid4())
    finish(dsn, worker, start(dsn, worker, 1000), "failed", "boom")


# --- cancel ----------------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_cancels_its_dependents_transitively(conn: db.Connection) -> None:
    root = add(conn)
    child = add(conn, after=[root])
    grandchild = add(conn, after=[child])
    bystander = add(conn)
    result = repository.cancel_job(conn, root)
    assert (result.state, result.dependents_cancelled) == ("cancelled", 2)
    for job_id in (root, child, grandchild):
        job = repository.get_job(conn, job_id)
        assert job["state"] == "cancelled" and job["finished_at"] is not None
    assert state(conn, bystander) == "queued"


def test_cancelling_a_waiting_job_leaves_its_dependency_alone(conn: db.Connection) -> None:
    root = add(conn)
    child = add(conn, after=[root])
    assert repository.cancel_job(conn, child).state == "cancelled"
    assert state(conn, root) == "queued"


def test_cancelling_a_running_job_asks_its_worker_by_notify_and_by_poll(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn)
    worker = str(uuid.uuid4())
    (claimed,) = start(dsn, worker)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{repository.cancel_channel()}"')
        result = repository.cancel_job(conn, job_id)
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert result.state == "running"
    assert notes == [(repository.cancel_channel(), str(job_id))]
    assert state(conn, job_id) == "running"
    assert run_async(dsn, lambda c: repository.cancel_requested(c, worker)) == {claimed.lease}


def test_cancelling_a_finished_or_unknown_job_is_an_error(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn)
    worker = str(uuid.uuid4())
    finish(dsn, worker, start(dsn, worker), "succeeded")
    with pytest.raises(WrongState, match=rf"^job {job_id} already succeeded; nothing to cancel$"):
        repository.cancel_job(conn, job_id)
    with pytest.raises(NotFound):
        repository.cancel_job(conn, 999_999)


# --- retry -----------------------------------------------------------------------------------------------


def test_retrying_a_failed_job_gives_a_fresh_budget_and_wakes_workers(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn, max_attempts=1)
    fail_all(dsn)
    assert state(conn, job_id) == "failed"
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{repository.wakeup_channel()}"')
        result = repository.retry_job(conn, job_id)
        notes = [n.payload.split()[0] for n in listener.notifies(timeout=2, stop_after=1)]
    assert result.queued == [job_id] and notes == ["default"]
    row = conn.row(
        "SELECT state::text, attempt, error, finished_at, worker_id, started_at, cancel_requested_at "
        "FROM sched_jobs_all WHERE id = %s",
        (job_id,),
    )
    assert row == ("queued", 0, None, None, None, None, None)


def test_retrying_a_job_that_is_not_failed_or_cancelled_is_an_error(conn: db.Connection) -> None:
    job_id = add(conn)
    with pytest.raises(WrongState, match="is queued; only failed or cancelled jobs can be retried"):
        repository.retry_job(conn, job_id)
    with pytest.raises(NotFound):
        repository.retry_job(conn, 999_999)


def test_a_retried_cancelled_job_waits_again_for_unfinished_dependencies(dsn: str, conn: db.Connection) -> None:
    first = add(conn)
    second = add(conn)
    child = add(conn, after=[first, second])
    repository.cancel_job(conn, child)
    worker = str(uuid.uuid4())
    (claimed,) = start(dsn, worker, limit=1)
    assert claimed.id == first
    finish(dsn, worker, [claimed], "succeeded")
    result = repository.retry_job(conn, child)
    assert result.waiting == [child]
    assert conn.row("SELECT pending_deps FROM sched_jobs_all WHERE id = %s", (child,)) == (1,)
    finish(dsn, worker, start(dsn, worker), "succeeded")
    assert state(conn, child) == "queued"


def test_a_job_whose_dependency_failed_is_refused_until_that_is_retried(dsn: str, conn: db.Connection) -> None:
    parent = add(conn, max_attempts=1)
    child = add(conn, after=[parent])
    fail_all(dsn)
    assert state(conn, child) == "cancelled"
    with pytest.raises(WrongState, match=rf"depends on job {parent}, which failed; retry that one first"):
        repository.retry_job(conn, child)
    # Retrying both in one call revives the dependency first, so the dependent waits for it.
    result = bulk.perform(conn, "retry", bulk.build_filter("retry"))
    assert (result.queued, result.waiting, result.refused) == ([parent], [child], [])


def test_bulk_retry_is_limited_to_a_queue_and_to_the_states_asked_for(dsn: str, conn: db.Connection) -> None:
    failed_here = add(conn, max_attempts=1)
    cancelled_here = add(conn)
    repository.cancel_job(conn, cancelled_here)
    fail_all(dsn)
    other = add(conn, queue="other")
    repository.cancel_job(conn, other)
    assert retry_matching(conn, ["failed"], "default").queued == [failed_here]
    assert state(conn, cancelled_here) == "cancelled"
    assert retry_matching(conn, ["cancelled"], "default").queued == [cancelled_here]
    assert state(conn, other) == "cancelled"


def test_retry_refuses_a_job_whose_key_a_live_job_now_holds(dsn: str, conn: db.Connection) -> None:
    old = add(conn, key="k")
    repository.cancel_job(conn, old)
    add(conn, key="k")
    with pytest.raises(WrongState, match="dedupe key"):
        repository.retry_job(conn, old)
