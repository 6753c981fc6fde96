"""The protocol holes that leases, per-worker liveness contracts and sticky cancels close, each reproduced
through the repository with real connections (docs/protocol.md). Each test fails on the fence of
(worker_id, attempt), a reaper's own threshold, or a claim that reads a paused row from its snapshot."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta

from pgsched import db, repository
from pgsched.models import NewJob, Outcome, OutcomeKind


async def _with_conn(dsn: str, body):
    conn = await db.connect_async(dsn)
    try:
        return await body(conn)
    finally:
        await conn.close()


def run(dsn: str, body):
    """Run ``body(conn)`` on a fresh asyncio connection."""
    return asyncio.run(_with_conn(dsn, body))


def add(conn: db.Connection, **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task="t", **fields)).id  # type: ignore[arg-type]


def claim(dsn: str, worker: str, limit: int = 10) -> list:
    return run(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], limit))


def record(dsn: str, worker: str, *outcomes: Outcome) -> repository.RecordResult:
    return run(dsn, lambda c: repository.record_outcomes(c, worker, list(outcomes)))


def register(dsn: str, conn: db.Connection, worker: str, *, stale_after_s: float, beat_age_s: float) -> None:
    run(
        dsn,
        lambda c: repository.register_worker(
            c, worker, "host", 1, ["default"], ["t"], 4, stale_after_s=stale_after_s, timeout_grace_s=10
        ),
    )
    conn.run(
        "UPDATE sched_workers SET heartbeat_at = now() - %s WHERE id = %s", (timedelta(seconds=beat_age_s), worker)
    )


def job(conn: db.Connection, job_id: int) -> dict:
    return repository.get_job(conn, job_id)


# --- the fence is the lease, not (worker, attempt) ------------------------------------------------------------


def test_a_retried_jobs_old_run_cannot_finish_the_new_run_of_the_same_worker(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    register(dsn, conn, worker, stale_after_s=30, beat_age_s=0)
    job_id = add(conn, max_attempts=1)
    (run_a,) = claim(dsn, worker)
    # The worker looks dead for a while: its only attempt is failed as "worker lost".
    conn.run("UPDATE sched_workers SET heartbeat_at = now() - interval '1 minute'")
    assert run(dsn, lambda c: repository.reap_stale(c)).failed == [job_id]
    register(dsn, conn, worker, stale_after_s=30, beat_age_s=0)
    assert repository.retry_job(conn, job_id).queued == [job_id]
    (run_b,) = claim(dsn, worker)
    assert (run_a.attempt, run_b.attempt) == (1, 1)  # the pair (worker, attempt) repeats; the lease does not
    assert run_a.lease != run_b.lease

    late = record(dsn, worker, Outcome(job_id, run_a.lease, OutcomeKind.SUCCEEDED, result='{"run": "a"}'))
    assert (late.written, late.fenced) == ([], [job_id])
    assert (job(conn, job_id)["state"], job(conn, job_id)["result"]) == ("running", None)
    current = record(dsn, worker, Outcome(job_id, run_b.lease, OutcomeKind.SUCCEEDED, result='{"run": "b"}'))
    assert current.written == [job_id]
    assert (job(conn, job_id)["state"], job(conn, job_id)["result"]) == ("succeeded", {"run": "b"})


def test_two_runs_of_one_job_in_one_batch_are_told_apart_by_lease(dsn: str, conn: db.Connection) -> None:
    # A worker that was reaped and claimed its own job again flushes both runs' ends together.
    worker = str(uuid.uuid4())
    job_id = add(conn)
    (run_a,) = claim(dsn, worker)
    run(dsn, lambda c: repository.reap_stale(c))  # no worker row: the run is lost and the job requeued
    (run_b,) = claim(dsn, worker)
    result = record(
        dsn,
        worker,
        Outcome(job_id, run_a.lease, OutcomeKind.FAILED, error="late"),
        Outcome(job_id, run_b.lease, OutcomeKind.SUCCEEDED),
    )
    assert (result.written, result.fenced) == ([job_id], [job_id])
    assert (job(conn, job_id)["state"], job(conn, job_id)["error"]) == ("succeeded", None)


# --- each worker is judged by its own contract ---------------------------------------------------------------


def test_a_reaper_never_judges_a_worker_by_a_shorter_threshold_than_it_declared(dsn: str, conn: db.Connection) -> None:
    patient, hasty = str(uuid.uuid4()), str(uuid.uuid4())
    register(dsn, conn, patient, stale_after_s=20, beat_age_s=5)  # beats every 5 s: healthy
    register(dsn, conn, hasty, stale_after_s=3, beat_age_s=5)  # promised a beat every 3 s: dead
    kept = add(conn)
    claim(dsn, patient)
    lost = add(conn)
    claim(dsn, hasty)
    result = run(dsn, lambda c: repository.reap_stale(c))
    assert (result.requeued, result.workers_removed) == ([lost], 1)
    assert job(conn, kept)["state"] == "running"
    assert [w["id"] for w in repository.list_workers(conn)] == [patient]


def test_an_overdue_run_is_judged_by_its_workers_grace(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    run(
        dsn,
        lambda c: repository.register_worker(
            c, worker, "h", 1, ["default"], ["t"], 4, stale_after_s=30, timeout_grace_s=120
        ),
    )
    job_id = add(conn, timeout_s=60.0)
    claim(dsn, worker)
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '100 seconds'")
    assert run(dsn, lambda c: repository.reap_stale(c)).requeued == []  # 100 s < 60 s + 120 s grace
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '200 seconds'")
    assert run(dsn, lambda c: repository.reap_stale(c)).requeued == [job_id]


# --- a cancel sticks -----------------------------------------------------------------------------------------


def test_a_cancelled_job_of_a_dead_worker_is_cancelled_by_the_reaper_not_run_again(
    dsn: str, conn: db.Connection
) -> None:
    worker = str(uuid.uuid4())
    register(dsn, conn, worker, stale_after_s=2, beat_age_s=0)
    job_id = add(conn)
    child = repository.enqueue(conn, NewJob(task="t", after=[job_id])).id
    claim(dsn, worker)
    assert repository.cancel_job(conn, job_id).state == "running"
    conn.run("UPDATE sched_workers SET heartbeat_at = now() - interval '1 minute'")
    result = run(dsn, lambda c: repository.reap_stale(c))
    assert (result.requeued, result.cancelled) == ([], [job_id])
    assert job(conn, job_id)["state"] == "cancelled"
    assert job(conn, job_id)["error"] == "cancelled on request; worker lost"
    assert job(conn, child)["state"] == "cancelled"
    assert claim(dsn, str(uuid.uuid4())) == []


def test_a_cancel_requested_job_is_cancelled_on_release_and_instead_of_a_retry(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    released, failed = add(conn), add(conn, max_attempts=5)
    runs = {j.id: j for j in claim(dsn, worker)}
    for job_id in (released, failed):
        repository.cancel_job(conn, job_id)
    result = record(
        dsn,
        worker,
        Outcome(released, runs[released].lease, OutcomeKind.RELEASED),
        Outcome(failed, runs[failed].lease, OutcomeKind.FAILED, error="RuntimeError: stopped"),
    )
    assert sorted(result.written) == sorted([released, failed])
    assert (job(conn, released)["state"], job(conn, released)["attempt"]) == ("cancelled", 1)
    assert job(conn, failed)["state"] == "cancelled"
    assert job(conn, failed)["error"] == "cancelled on request; the run failed: RuntimeError: stopped"
    assert claim(dsn, worker) == []


# --- queue controls under a concurrent pause -----------------------------------------------------------------


def test_toggling_pause_never_lets_claimers_past_an_empty_bucket(dsn: str, conn: db.Connection) -> None:
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(3000)])
    repository.set_queue_rate(conn, "default", 0.001, burst=1)
    assert len(claim(dsn, str(uuid.uuid4()))) == 1  # the full bucket held one token; now it is empty
    stop = threading.Event()
    claimed: list[int] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        async def body(c: db.AsyncConnection) -> None:
            worker = str(uuid.uuid4())
            while not stop.is_set():
                claimed.extend(j.id for j in await repository.claim_jobs(c, worker, "default", ["t"], 100))

        try:
            run(dsn, body)
        except BaseException as exc:
            errors.append(exc)

    def operator() -> None:
        with db.connect(dsn) as own:
            while not stop.is_set():
                repository.set_queue_paused(own, "default", True)
                repository.set_queue_paused(own, "default", False)

    threads = [threading.Thread(target=claimer) for _ in range(4)] + [threading.Thread(target=operator)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    # 0.001 tokens per second refill nothing worth a job in a few seconds.
    assert claimed == []


# --- priority holds for jobs that were deferred ----------------------------------------------------------------


def test_due_deferred_jobs_are_claimed_by_priority(dsn: str, conn: db.Connection) -> None:
    low, middle, high = (add(conn, delay_s=60.0, priority=p) for p in (-5, 0, 1000))
    ready = add(conn, priority=500)
    conn.run("UPDATE sched_jobs SET run_at = now() - interval '1 second' WHERE deferred")
    worker = str(uuid.uuid4())
    order = [claim(dsn, worker, limit=1)[0].id for _ in range(4)]
    assert order == [high, ready, middle, low]


def test_promotion_moves_only_due_deferred_jobs_into_the_ready_index(dsn: str, conn: db.Connection) -> None:
    due = [add(conn, delay_s=60.0, queue=q) for q in ("a", "b", "b")]
    future = add(conn, delay_s=3600.0)
    conn.run("UPDATE sched_jobs SET run_at = now() - interval '1 second' WHERE id = ANY(%s)", (due,))
    assert run(dsn, lambda c: repository.promote_due(c)) == 3
    flags = dict(conn.rows("SELECT id, deferred FROM sched_jobs"))
    assert flags == {**dict.fromkeys(due, False), future: True}
    assert run(dsn, lambda c: repository.promote_due(c)) == 0
