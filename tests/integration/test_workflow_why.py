"""``why`` against a real PostgreSQL: each reason a job is not running, derived from the facts."""

from __future__ import annotations

import uuid

from support.connections import run_async

from pgsched import db, repository
from pgsched.models import NewJob, Outcome
from pgsched.why import describe_job


def add(conn: db.Connection, **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task="t", **fields)).id  # type: ignore[arg-type]


def why(conn: db.Connection, job_id: int) -> str | None:
    return describe_job(conn, job_id)["why"]


def register(conn: db.Connection, queues: list[str], tasks: list[str], concurrency: int = 2, running: int = 0) -> None:
    conn.run(
        "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, running) "
        "VALUES (%s, 'h', 1, %s, %s, %s, %s)",
        (str(uuid.uuid4()), queues, tasks, concurrency, running),
    )


def claim_and_finish(dsn: str, kind: str, error: str | None = None, retryable: bool = True) -> None:
    async def main(c: db.AsyncConnection) -> None:
        worker = str(uuid.uuid4())
        jobs = await repository.claim_jobs(c, worker, "default", ["t"], 10)
        outcomes = [Outcome(j.id, j.lease, kind, error=error, retryable=retryable) for j in jobs]
        await repository.record_outcomes(c, worker, outcomes)

    run_async(dsn, main)


def test_scheduled_for_later(conn: db.Connection) -> None:
    job_id = add(conn, delay_s=3600)
    assert why(conn, job_id).startswith("scheduled for later: runs at ")  # type: ignore[union-attr]
    assert "(in 1h)" in why(conn, job_id) or "(in 59m" in why(conn, job_id)  # type: ignore[operator]


def test_waiting_on_dependencies_names_them(conn: db.Connection) -> None:
    first, second = add(conn), add(conn)
    child = add(conn, after=[first, second])
    assert why(conn, child) == f"waiting on dependencies: job {first} (queued), job {second} (queued)"


def test_paused_queue(conn: db.Connection) -> None:
    job_id = add(conn)
    register(conn, ["default"], ["t"])
    repository.set_queue_paused(conn, "default", True)
    assert why(conn, job_id) == "queue default is paused (sched queue resume default)"


def test_rate_limited(dsn: str, conn: db.Connection) -> None:
    add(conn)
    job_id = add(conn)
    register(conn, ["default"], ["t"])
    repository.set_queue_rate(conn, "default", 1 / 60, burst=1)

    async def take_the_token(c: db.AsyncConnection) -> None:
        assert len(await repository.claim_jobs(c, str(uuid.uuid4()), "default", ["t"], 10)) == 1

    run_async(dsn, take_the_token)
    assert why(conn, job_id).startswith("rate-limited: queue default allows 1/m; next slot in ")  # type: ignore[union-attr]


def test_no_live_worker_for_the_queue_or_the_task(conn: db.Connection) -> None:
    job_id = add(conn)
    assert why(conn, job_id) == "no live worker serves queue default"
    register(conn, ["default"], ["other_task"])
    assert why(conn, job_id) == "no live worker serving queue default handles task t (1 lack it)"
    conn.run("UPDATE sched_workers SET tasks = '{t}', heartbeat_at = now() - interval '1 minute'")
    assert why(conn, job_id) == "no live worker serves queue default"


def test_all_serving_workers_busy_with_jobs_ahead(conn: db.Connection) -> None:
    add(conn, priority=5)
    add(conn)
    job_id = add(conn)
    add(conn, priority=-1)
    register(conn, ["default"], ["t"], concurrency=2, running=2)
    assert why(conn, job_id) == "the only serving worker is busy (2/2 slots), 2 jobs ahead of it"
    register(conn, ["default", "other"], ["t"], concurrency=3, running=3)
    assert why(conn, job_id) == "all 2 serving workers are busy (5/5 slots), 2 jobs ahead of it"
    conn.run("UPDATE sched_workers SET running = 0")
    assert why(conn, job_id) == "ready; 2 jobs ahead of it"
    assert why(conn, add(conn, priority=9)) == "ready; 0 jobs ahead of it"


def test_attempts_exhausted_with_the_last_error(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn, max_attempts=1)
    claim_and_finish(dsn, "failed", "disk full")
    assert why(conn, job_id) == "attempts exhausted (1 of 1); last error: disk full"


def test_a_retry_waiting_for_its_backoff_says_so(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn, max_attempts=3)
    claim_and_finish(dsn, "failed", "flaky")
    reason = why(conn, job_id)
    assert reason is not None and reason.startswith("scheduled for later")
    assert reason.endswith("(retrying after: flaky)")


def test_finished_and_running_jobs_get_a_short_factual_line(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn)
    claim_and_finish(dsn, "succeeded")
    assert why(conn, job_id) is None
    other = add(conn)
    repository.cancel_job(conn, other)
    assert why(conn, other) == "cancelled by request"
