"""Sync handlers past their timeout keep running in their threads (a thread cannot be killed), but never take
a thread away from a slot: later jobs start at once, and fail for a timeout only if they run into it
themselves; /healthz and the metrics count the abandoned threads."""

from __future__ import annotations

import signal

from harness import free_port, get, health, query, sample, scalar, wait_for


def test_abandoned_sync_handlers_do_not_starve_later_jobs(dsn, start_worker, add_jobs) -> None:
    port = free_port()
    blocking = add_jobs("plain_sync", 2, payload='{"seconds": 8}', timeout_s=1, max_attempts=1)
    worker = start_worker("--concurrency", "2", "--health-port", str(port), "--poll-interval", "0.2s")
    wait_for(
        lambda: query(dsn, "SELECT DISTINCT state::text FROM sched_jobs_all") == [("failed",)],
        15,
        "the two blocking jobs to time out",
    )
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") == 2
    # Both abandoned handlers still sleep; the next jobs start at once in spare threads and finish.
    quick = add_jobs("plain_sync", 4, payload='{"seconds": 0.2}', timeout_s=1, max_attempts=1)
    wait_for(
        lambda: (
            query(dsn, "SELECT DISTINCT state::text FROM sched_jobs_all WHERE id = ANY(%s)", (quick,))
            == [("succeeded",)]
        ),
        10,
        "the later jobs to succeed",
    )
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'end' AND job_id = ANY(%s)", (quick,)) == 4
    # The blocking handlers sleep on (8 s), each in a thread the worker gave up on.
    _status, body = health(port)
    assert body["abandoned_threads"] == 2
    assert sample(get(port, "/metrics")[1], "sched_worker_abandoned_threads") == 2
    errors = query(dsn, "SELECT DISTINCT error FROM sched_jobs_all WHERE id = ANY(%s)", (blocking,))
    assert errors == [("timed out after 1s",)]
    wait_for(lambda: health(port)[1]["abandoned_threads"] == 0, 15, "the abandoned handlers to return")
    assert sample(get(port, "/metrics")[1], "sched_worker_abandoned_threads") == 0
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()[-3000:]
