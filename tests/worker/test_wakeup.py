"""Wake-ups: an idle worker hears the enqueue's NOTIFY and starts the job long before its next poll;
with --no-listen it has no listening connection and finds jobs by polling."""

from __future__ import annotations

import signal
import statistics
import time

from harness import query, scalar, wait_for

from pgsched import repository
from pgsched.models import NewJob


def latency(dsn: str, job_id: int) -> float | None:
    """Seconds from enqueue to claim, both stamped by the server."""
    return scalar(
        dsn, "SELECT extract(epoch FROM started_at - created_at)::float8 FROM sched_jobs_all WHERE id = %s", (job_id,)
    )


def listeners(dsn: str) -> int:
    return scalar(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'sched-worker-listen'",
    )


def test_an_idle_worker_starts_a_new_job_well_within_the_poll_interval(dsn, start_worker, add_jobs) -> None:
    worker = start_worker("--concurrency", "2", "--poll-interval", "5s")
    wait_for(lambda: listeners(dsn) == 1, 20, "the worker to listen")
    [warm] = add_jobs("count")
    wait_for(lambda: latency(dsn, warm) is not None, 10, "the first job")
    samples = []
    for _ in range(20):
        [job_id] = add_jobs("count")
        samples.append(wait_for(lambda job_id=job_id: latency(dsn, job_id), 10, "the job to start", interval=0.02))
        wait_for(lambda: scalar(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state = 'running'") == 0, 10, "idle")
    median = statistics.median(samples)
    print(
        f"\nenqueue-to-start latency over {len(samples)} jobs (poll interval 5 s): median {median * 1000:.1f} ms, "
        f"min {min(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"
    )
    # Polling alone would give a median near half the poll interval (2.5 s).
    assert median < 1.0, samples
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_no_listen_polls_instead(dsn, start_worker, add_jobs) -> None:
    worker = start_worker("--concurrency", "2", "--poll-interval", "1s", "--no-listen")
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM sched_workers") == 1, 20, "the worker to register")
    ids = add_jobs("count", 3)
    wait_for(
        lambda: scalar(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state = 'succeeded'") == 3,
        10,
        "polled jobs to run",
    )
    assert listeners(dsn) == 0
    assert {r[0] for r in query(dsn, "SELECT job_id FROM executions")} == set(ids)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def start_delay(dsn: str, job_id: int) -> float | None:
    """Seconds from the moment the job was due to its claim, both stamped by the server."""
    return scalar(
        dsn, "SELECT extract(epoch FROM started_at - run_at)::float8 FROM sched_jobs_all WHERE id = %s", (job_id,)
    )


# Each worker below polls once a minute: a job that starts within a few seconds of its due time was woken for.
SLOW_POLL = "60s"
WITHIN_S = 10


def test_a_deferred_job_added_in_bulk_starts_when_it_falls_due(dsn, conn, start_worker) -> None:
    # One statement adds a job due now and one due in 2 s: the bulk insert's wake-ups say when the second falls
    # due, as a single insert's does (it once said "now" only, and the second waited for the poll).
    start_worker("--concurrency", "2", "--poll-interval", SLOW_POLL)
    wait_for(lambda: listeners(dsn) == 1, 20, "the worker to listen")
    [_, later] = repository.enqueue_many(conn, [NewJob(task="count"), NewJob(task="count", delay_s=2)])
    delay = wait_for(lambda: start_delay(dsn, later.id), WITHIN_S + 2, "the deferred job to start")
    assert 0 <= delay < WITHIN_S


def test_a_deferred_job_the_worker_never_heard_of_starts_when_it_falls_due(dsn, start_worker, add_jobs) -> None:
    # Added before the worker listened, the job's NOTIFY reached nobody; the worker's promotion of due jobs, once
    # a second, wakes its fetcher when it moves a job of its queues into the ready index.
    [job_id] = add_jobs("count", delay_s=3)
    start_worker("--concurrency", "2", "--poll-interval", SLOW_POLL)
    delay = wait_for(lambda: start_delay(dsn, job_id), WITHIN_S + 3, "the deferred job to start")
    assert 0 <= delay < WITHIN_S


def test_resuming_a_queue_wakes_its_workers(dsn, conn, start_worker, add_jobs) -> None:
    repository.set_queue_paused(conn, "default", True)
    [job_id] = add_jobs("count")
    start_worker("--concurrency", "2", "--poll-interval", SLOW_POLL)
    wait_for(lambda: listeners(dsn) == 1, 20, "the worker to listen")
    time.sleep(1)  # its first claims found the queue paused
    assert latency(dsn, job_id) is None
    repository.set_queue_paused(conn, "default", False)
    wait_for(lambda: latency(dsn, job_id), WITHIN_S, "the job to start after the resume")
