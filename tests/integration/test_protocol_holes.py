"""The protocol holes that leases, per-worker liveness contracts and sticky cancels close, each reproduced
through the repository with real connections (docs/protocol.md). Each test fails on the fence of
(worker_id, attempt), a reaper's own threshold, or a claim that reads a paused row from its snapshot."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.errors import SchedError
from pgsched.models import NewJob, Outcome, OutcomeKind


def add(conn: db.Connection, **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task="t", **fields)).id  # type: ignore[arg-type]


def claim(dsn: str, worker: str, limit: int = 10) -> list:
    return run_async(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], limit))


def record(dsn: str, worker: str, *outcomes: Outcome) -> repository.RecordResult:
    return run_async(dsn, lambda c: repository.record_outcomes(c, worker, list(outcomes)))


def register(dsn: str, conn: db.Connection, worker: str, *, stale_after_s: float, beat_age_s: float) -> None:
    run_async(
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
    assert run_async(dsn, lambda c: repository.reap_stale(c)).failed == [job_id]
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
    run_async(dsn, lambda c: repository.reap_stale(c))  # no worker row: the run is lost and the job requeued
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
    result = run_async(dsn, lambda c: repository.reap_stale(c))
    assert (result.requeued, result.workers_removed) == ([lost], 1)
    assert job(conn, kept)["state"] == "running"
    assert [w["id"] for w in repository.list_workers(conn)] == [patient]


def test_an_overdue_run_is_judged_by_its_workers_grace(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    run_async(
        dsn,
        lambda c: repository.register_worker(
            c, worker, "h", 1, ["default"], ["t"], 4, stale_after_s=30, timeout_grace_s=120
        ),
    )
    job_id = add(conn, timeout_s=60.0)
    claim(dsn, worker)
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '100 seconds'")
    assert run_async(dsn, lambda c: repository.reap_stale(c)).requeued == []  # 100 s < 60 s + 120 s grace
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '200 seconds'")
    assert run_async(dsn, lambda c: repository.reap_stale(c)).requeued == [job_id]


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
    result = run_async(dsn, lambda c: repository.reap_stale(c))
    assert (result.requeued, result.cancelled) == ([], [job_id])
    assert job(conn, job_id)["state"] == "cancelled"
    assert job(conn, job_id)["error"] == "cancelled on request (worker lost)"
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
    assert job(conn, failed)["error"] == "cancelled on request (the run failed: RuntimeError: stopped)"
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
            run_async(dsn, body)
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
    assert run_async(dsn, lambda c: repository.promote_due(c)) == 3
    flags = dict(conn.rows("SELECT id, deferred FROM sched_jobs_all"))
    assert flags == {**dict.fromkeys(due, False), future: True}
    assert run_async(dsn, lambda c: repository.promote_due(c)) == 0


def test_a_promotion_wakes_the_workers_of_the_queues_it_moved_jobs_of(dsn: str, conn: db.Connection) -> None:
    # A retry's backoff or a delay that ran out sends no NOTIFY of its own: whichever worker's promotion moves
    # the job tells every worker of its queue, not only itself (it may have no free slot).
    due = [add(conn, delay_s=60.0, queue=q) for q in ("a", "b", "b")]
    add(conn, delay_s=3600.0, queue="c")
    conn.run("UPDATE sched_jobs SET run_at = now() - interval '1 second' WHERE id = ANY(%s)", (due,))
    with psycopg.connect(dsn, autocommit=True) as listener:
        # The installation's channel: suffixed with its schema outside public.
        listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(repository.wakeup_channel())))
        assert run_async(dsn, lambda c: repository.promote_due(c)) == 3
        heard = sorted(n.payload for n in listener.notifies(timeout=2, stop_after=2))
        assert [payload.split(" ")[0] for payload in heard] == ["a", "b"]
        # Nothing promoted, nothing sent.
        assert run_async(dsn, lambda c: repository.promote_due(c)) == 0
        assert list(listener.notifies(timeout=0.5)) == []


# --- keys under concurrency ------------------------------------------------------------------------------------


def test_a_bulk_insert_whose_key_holder_finishes_meanwhile_inserts_the_job(dsn: str, conn: db.Connection) -> None:
    # The holder finishes between the skipped insert and the look-up of holders: simulated by finishing it
    # from a second connection when the bulk insert's staging table is filled (a trigger would be in the way).
    holder = add(conn, key="k")
    worker = str(uuid.uuid4())
    (held,) = claim(dsn, worker)
    with db.connect(dsn) as producer, producer.transaction():
        first = repository.enqueue_many(producer, [NewJob(task="t", key="k")])
        assert first == [(holder, True)]
        record(dsn, worker, Outcome(holder, held.lease, OutcomeKind.SUCCEEDED))
        # Same transaction, second keyed batch (the staging table of the first is gone): the key is free now.
        (second,) = repository.enqueue_many(producer, [NewJob(task="t", key="k")])
    assert second.deduplicated is False and second.id != holder
    assert job(conn, second.id)["state"] == "queued"


def test_two_keyed_bulk_inserts_in_one_caller_transaction(dsn: str, conn: db.Connection) -> None:
    with db.connect(dsn) as producer, producer.transaction():
        a = repository.enqueue_many(producer, [NewJob(task="t", key="a"), NewJob(task="t", key="a")])
        b = repository.enqueue_many(producer, [NewJob(task="t", key="b"), NewJob(task="t", key="a")])
    assert [e.deduplicated for e in a] == [False, True] and a[1].id == a[0].id
    assert [e.deduplicated for e in b] == [False, True] and b[1].id == a[0].id


def test_retry_racing_an_uncommitted_add_of_the_same_key_says_the_key_is_held(dsn: str, conn: db.Connection) -> None:
    failed = add(conn, key="k", max_attempts=1)
    worker = str(uuid.uuid4())
    (run_a,) = claim(dsn, worker)
    record(dsn, worker, Outcome(failed, run_a.lease, OutcomeKind.FAILED, error="boom"))
    outcome: list[object] = []
    with db.connect(dsn) as producer:
        with producer.transaction():
            fresh = repository.enqueue(producer, NewJob(task="t", key="k")).id

            def retry() -> None:
                with db.connect(dsn) as operator:
                    try:
                        outcome.append(repository.retry_job(operator, failed))
                    except Exception as exc:
                        outcome.append(exc)

            racer = threading.Thread(target=retry)
            racer.start()
            time.sleep(1.0)  # the retry now waits on the uncommitted key
        racer.join(timeout=30)
    (error,) = outcome
    assert type(error).__name__ == "WrongState"
    assert str(error) == f"job {failed} has a dedupe key that a live job now holds"
    assert job(conn, fresh)["state"] == "queued" and job(conn, failed)["state"] == "failed"


# --- the backlog cap -------------------------------------------------------------------------------------------


def test_a_repeatable_read_producer_cannot_pass_the_backlog_cap(dsn: str, conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 1)
    with db.connect(dsn) as late:
        late.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        late.raw.execute("SELECT 1")  # the snapshot is taken here, before the other add commits
        add(conn)  # fills the queue
        with pytest.raises(SchedError, match=r"run the transaction again"):
            repository.enqueue(late, NewJob(task="t"))
        late.raw.rollback()
    assert conn.row("SELECT count(*) FROM sched_jobs_all")[0] == 1
