"""Dependencies (DESIGN §9): refused when they cannot succeed, released on success, cancelled on failure."""

from __future__ import annotations

import uuid

import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.errors import InvalidInput
from pgsched.models import NewJob, Outcome


def add(conn: db.Connection, after: tuple[int, ...] = (), **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task="t", after=list(after), **fields)).id  # type: ignore[arg-type]


def finish(dsn: str, outcomes: dict[int, str], *, replays: int = 0) -> list[repository.RecordResult]:
    """Claim the given jobs with one worker and record one outcome kind per job, then replay the batch."""

    async def body(conn: db.AsyncConnection) -> list[repository.RecordResult]:
        worker = str(uuid.uuid4())
        await conn.rows("UPDATE sched_jobs SET priority = 1000 WHERE id = ANY(%(ids)s)", {"ids": list(outcomes)})
        claimed = await repository.claim_jobs(conn, worker, "default", ["t"], len(outcomes))
        assert sorted(j.id for j in claimed) == sorted(outcomes)
        batch = [
            Outcome(j.id, j.lease, outcomes[j.id], error="boom", retryable=False, result=f'{{"ok": {j.id}}}')
            for j in claimed
        ]
        return [await repository.record_outcomes(conn, worker, batch) for _ in range(1 + replays)]

    return run_async(dsn, body)


def states(conn: db.Connection, *ids: int) -> list[str]:
    return [repository.get_job(conn, job_id)["state"] for job_id in ids]


def pending(conn: db.Connection, job_id: int) -> int:
    return repository.get_job(conn, job_id)["pending_deps"]


def test_missing_dependency_is_refused(conn: db.Connection) -> None:
    real = add(conn)
    with pytest.raises(InvalidInput) as info:
        add(conn, after=(real, 999_999))
    assert info.value.message == "--after 999999: no such job"
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (1,)
    assert conn.row("SELECT count(*) FROM sched_job_deps") == (0,)


@pytest.mark.parametrize("kind", ["failed", "cancelled"])
def test_dependency_that_cannot_succeed_is_refused(dsn: str, conn: db.Connection, kind: str) -> None:
    doomed = add(conn)
    finish(dsn, {doomed: kind})
    with pytest.raises(InvalidInput) as info:
        add(conn, after=(doomed,))
    assert info.value.message == f"--after {doomed}: that job {kind}, so this one could never run"
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (1,)


def test_dependency_already_succeeded_queues_at_once(dsn: str, conn: db.Connection) -> None:
    done = add(conn)
    finish(dsn, {done: "succeeded"})
    child = add(conn, after=(done,))
    assert states(conn, child) == ["queued"]
    assert pending(conn, child) == 0
    assert repository.get_job(conn, child)["depends_on"] == [done]


def test_success_releases_dependents(dsn: str, conn: db.Connection) -> None:
    a, b = add(conn), add(conn)
    both = add(conn, after=(a, b, a))  # a repeated id counts once
    only_a = add(conn, after=(a,))
    assert states(conn, both, only_a) == ["waiting", "waiting"]
    assert pending(conn, both) == 2
    assert repository.get_job(conn, both)["depends_on"] == sorted([a, b])

    (result,) = finish(dsn, {a: "succeeded"})
    assert result.wake_queues == {"default"}
    assert states(conn, both, only_a) == ["waiting", "queued"]
    assert pending(conn, both) == 1
    finish(dsn, {b: "succeeded"})
    assert states(conn, both) == ["queued"]
    assert pending(conn, both) == 0


def test_failure_cancels_dependents_transitively(dsn: str, conn: db.Connection) -> None:
    root, other = add(conn), add(conn)
    child = add(conn, after=(root,))
    grandchild = add(conn, after=(child, other))
    unrelated = add(conn, after=(other,))
    finish(dsn, {root: "failed"})
    assert states(conn, root, child, grandchild, unrelated) == ["failed", "cancelled", "cancelled", "waiting"]
    assert repository.get_job(conn, grandchild)["error"] == "a job it depends on failed or was cancelled"
    assert repository.get_job(conn, grandchild)["finished_at"] is not None
    # The cancelled grandchild is not resurrected when its other dependency succeeds.
    finish(dsn, {other: "succeeded"})
    assert states(conn, grandchild, unrelated) == ["cancelled", "queued"]


def test_cancelled_job_cancels_its_dependents(dsn: str, conn: db.Connection) -> None:
    root = add(conn)
    child = add(conn, after=(root,))
    finish(dsn, {root: "cancelled"})
    assert states(conn, child) == ["cancelled"]


def test_retry_does_not_touch_dependents(dsn: str, conn: db.Connection) -> None:
    root = add(conn, max_attempts=3)
    child = add(conn, after=(root,))

    async def fail_once(c: db.AsyncConnection) -> None:
        worker = str(uuid.uuid4())
        (claimed,) = await repository.claim_jobs(c, worker, "default", ["t"], 1)
        await repository.record_outcomes(c, worker, [Outcome(claimed.id, claimed.lease, "failed")])

    run_async(dsn, fail_once)
    assert states(conn, root, child) == ["queued", "waiting"]
    assert pending(conn, child) == 1


def test_reaped_final_attempt_cancels_dependents(dsn: str, conn: db.Connection) -> None:
    root = add(conn, max_attempts=1)
    child = add(conn, after=(root,))

    async def crash_and_reap(c: db.AsyncConnection) -> repository.ReapResult:
        await repository.claim_jobs(c, str(uuid.uuid4()), "default", ["t"], 1)
        return await repository.reap_stale(c)

    assert run_async(dsn, crash_and_reap).failed == [root]
    assert states(conn, root, child) == ["failed", "cancelled"]


def test_replaying_an_outcome_batch_does_not_decrement_twice(dsn: str, conn: db.Connection) -> None:
    a, b = add(conn), add(conn)
    child = add(conn, after=(a, b))
    first, replay, again = finish(dsn, {a: "succeeded"}, replays=2)
    assert (first.written, first.fenced) == ([a], [])
    assert (replay.written, replay.fenced) == ([], [a])
    assert (again.written, again.fenced) == ([], [a])
    assert pending(conn, child) == 1
    assert states(conn, child) == ["waiting"]


def test_duplicate_outcome_within_one_batch_counts_once(dsn: str, conn: db.Connection) -> None:
    a, b = add(conn), add(conn)
    child = add(conn, after=(a, b))

    async def body(c: db.AsyncConnection) -> repository.RecordResult:
        worker = str(uuid.uuid4())
        await c.rows("UPDATE sched_jobs SET priority = 1000 WHERE id = %(id)s", {"id": a})
        (claimed,) = await repository.claim_jobs(c, worker, "default", ["t"], 1)
        outcome = Outcome(claimed.id, claimed.lease, "succeeded")
        return await repository.record_outcomes(c, worker, [outcome, outcome])

    run_async(dsn, body)
    assert pending(conn, child) == 1
    assert states(conn, a, child) == ["succeeded", "waiting"]
