"""Adding jobs: single inserts, bulk COPY with and without dedupe keys, and keys freed by finishing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.errors import InvalidInput
from pgsched.models import Enqueued, NewJob, Outcome


def all_jobs(conn: db.Connection) -> list[tuple]:
    return conn.rows("SELECT id, queue, task, payload, dedupe_key, state::text FROM sched_jobs_all ORDER BY id")


def finish(dsn: str, queue: str, kind: str = "succeeded") -> list[int]:
    async def body(c: db.AsyncConnection) -> list[int]:
        worker = str(uuid.uuid4())
        claimed = await repository.claim_jobs(c, worker, queue, ["t"], 100)
        outcomes = [Outcome(j.id, j.lease, kind, retryable=False) for j in claimed]
        return (await repository.record_outcomes(c, worker, outcomes)).written

    return run_async(dsn, body)


def test_enqueue_stores_every_field(conn: db.Connection) -> None:
    at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    result = repository.enqueue(
        conn,
        NewJob(task="t", payload_json='{"a":1}', queue="q", priority=7, run_at=at, max_attempts=9, timeout_s=42.5),
    )
    job = repository.get_job(conn, result.id)
    assert not result.deduplicated
    assert (job["task"], job["queue"], job["payload"], job["priority"], job["run_at"]) == ("t", "q", {"a": 1}, 7, at)
    assert (job["max_attempts"], job["timeout_s"], job["state"], job["attempt"]) == (9, 42.5, "queued", 0)


def test_delay_is_measured_by_the_server_clock(conn: db.Connection) -> None:
    job_id = repository.enqueue(conn, NewJob(task="t", delay_s=3600)).id
    (gap,) = conn.row("SELECT extract(epoch FROM run_at - created_at) FROM sched_jobs_all WHERE id = %s", (job_id,))
    assert float(gap) == pytest.approx(3600)


def test_key_deduplicates_live_jobs_and_is_freed_by_finishing(dsn: str, conn: db.Connection) -> None:
    first = repository.enqueue(conn, NewJob(task="t", key="report-1"))
    again = repository.enqueue(conn, NewJob(task="t", key="report-1", payload_json='{"x":1}'))
    assert again == Enqueued(first.id, deduplicated=True)
    other_queue = repository.enqueue(conn, NewJob(task="t", key="report-1", queue="other"))
    assert not other_queue.deduplicated
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (2,)
    assert finish(dsn, "default") == [first.id]
    after = repository.enqueue(conn, NewJob(task="t", key="report-1"))
    assert not after.deduplicated and after.id > other_queue.id


@pytest.mark.parametrize("kind", ["failed", "cancelled"])
def test_key_is_freed_by_failing_or_cancelling(dsn: str, conn: db.Connection, kind: str) -> None:
    first = repository.enqueue(conn, NewJob(task="t", key="k"))
    finish(dsn, "default", kind)
    assert repository.enqueue(conn, NewJob(task="t", key="k")).id != first.id


def test_enqueue_many_without_keys(conn: db.Connection) -> None:
    jobs = [
        NewJob(task="t", payload_json=f'{{"n":{n}}}', queue=f"q{n % 2}", priority=n, delay_s=60 if n == 2 else None)
        for n in range(5)
    ]
    results = repository.enqueue_many(conn, jobs)
    assert [r.deduplicated for r in results] == [False] * 5
    ids = [r.id for r in results]
    assert ids == sorted(ids)
    rows = all_jobs(conn)
    assert [row[0] for row in rows] == ids
    assert [(row[1], row[3]) for row in rows] == [(f"q{n % 2}", {"n": n}) for n in range(5)]
    counts = {q["queue"]: q for q in repository.count_by_queue(conn)}
    assert (counts["q0"]["queued"], counts["q0"]["scheduled"], counts["q1"]["queued"]) == (2, 1, 2)


def test_enqueue_many_with_keys(conn: db.Connection) -> None:
    live = repository.enqueue(conn, NewJob(task="t", key="taken")).id
    jobs = [
        NewJob(task="t", key="a", payload_json='{"n":0}'),
        NewJob(task="t", payload_json='{"n":1}'),
        NewJob(task="t", key="a", payload_json='{"n":2}'),  # same key earlier in this batch
        NewJob(task="t", key="taken"),  # same key as a live job
        NewJob(task="t", key="a", queue="other"),  # keys are per queue
        NewJob(task="t", payload_json='{"n":5}'),
    ]
    results = repository.enqueue_many(conn, jobs)
    assert [r.deduplicated for r in results] == [False, False, True, True, False, False]
    assert results[2].id == results[0].id
    assert results[3].id == live
    stored = {row[0]: row for row in all_jobs(conn)}
    assert sorted(stored) == sorted({live, results[0].id, results[1].id, results[4].id, results[5].id})
    assert stored[results[0].id][3] == {"n": 0}
    assert stored[results[4].id][1:5] == ("other", "t", {}, "a")


def test_enqueue_many_is_all_or_nothing(conn: db.Connection) -> None:
    # The database's own checks are the last line of defence; a bad row aborts the whole COPY.
    jobs = [NewJob(task="t"), NewJob(task="bad name")]
    with pytest.raises(InvalidInput):
        repository.enqueue_many(conn, jobs)
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (0,)
    assert repository.enqueue_many(conn, []) == []


def test_enqueue_many_refuses_dependencies(conn: db.Connection) -> None:
    with pytest.raises(InvalidInput, match="dependencies"):
        repository.enqueue_many(conn, [NewJob(task="t", after=[1])])


def test_enqueue_notifies_the_queue(dsn: str, conn: db.Connection) -> None:
    async def body(listener: db.AsyncConnection) -> list[tuple[str, str]]:
        await listener.listen([repository.wakeup_channel()])
        repository.enqueue(conn, NewJob(task="t", queue="mail"))
        repository.enqueue_many(conn, [NewJob(task="t", queue="bulk")] * 3)
        found: list[tuple[str, str]] = []
        for _ in range(20):
            found += await listener.notifications(0.5)
            if len(found) >= 2:
                break
        return found

    notes = run_async(dsn, body)
    assert [payload.split()[0] for _channel, payload in notes] == ["mail", "bulk"]


def test_literal_strings_are_stored_as_data(conn: db.Connection) -> None:
    nasty = "'); DROP TABLE sched_jobs; --"
    payload = '{"sql":"\'; DELETE FROM sched_jobs; --","path":"C:\\\\u0000dir"}'
    job_id = repository.enqueue(conn, NewJob(task="t", key=nasty, payload_json=payload)).id
    job = repository.get_job(conn, job_id)
    assert job["key"] == nasty
    assert job["payload"] == {"sql": "'; DELETE FROM sched_jobs; --", "path": "C:\\u0000dir"}


def test_timeouts_survive_the_round_trip(conn: db.Connection) -> None:
    ids = [r.id for r in repository.enqueue_many(conn, [NewJob(task="t", timeout_s=s) for s in (0.5, 90, 7 * 86400)])]
    assert [repository.get_job(conn, i)["timeout_s"] for i in ids] == [
        0.5,
        90.0,
        float(timedelta(days=7).total_seconds()),
    ]
