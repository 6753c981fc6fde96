"""Graceful shutdown (docs/protocol.md, "Shutdown"): SIGTERM stops claiming, lets running jobs finish, releases
what is left without spending an attempt, deregisters and exits 0; a second signal skips the wait."""

from __future__ import annotations

import json
import signal

from harness import query, scalar, states, wait_for, worker_rows


def started_jobs(dsn: str) -> set[int]:
    return {row[0] for row in query(dsn, "SELECT job_id FROM executions WHERE phase = 'start'")}


def fill_slots(dsn: str, add_jobs, start_worker, seconds: float, *args: str):
    """Ten async and ten sync slow jobs for a worker with ten slots; returns (ids, worker) once ten run."""
    payload = json.dumps({"seconds": seconds})
    # Claimed in id order: the first ten (five of each kind) run, the last ten wait.
    ids = add_jobs("sleepy", 5, payload) + add_jobs("sleepy_sync", 5, payload)
    ids += add_jobs("sleepy", 5, payload) + add_jobs("sleepy_sync", 5, payload)
    worker = start_worker("--concurrency", "10", "--stale-after", "5s", *args)
    wait_for(lambda: len(started_jobs(dsn)) == 10, 20, "ten jobs to start")
    assert started_jobs(dsn) == set(ids[:10])
    return ids, worker


def assert_untouched(dsn: str, ids: list[int]) -> None:
    rows = query(dsn, "SELECT state::text, attempt, worker_id FROM sched_jobs_all WHERE id = ANY(%s)", (ids,))
    assert rows and set(rows) == {("queued", 0, None)}


def test_sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued(dsn, start_worker, add_jobs) -> None:
    ids, worker = fill_slots(dsn, add_jobs, start_worker, 2)
    running = started_jobs(dsn)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()[-2000:]
    log = worker.log()
    assert "received SIGTERM, shutting down gracefully" in log
    assert "releasing" not in log
    rows = query(dsn, "SELECT id, state::text, attempt FROM sched_jobs_all WHERE id = ANY(%s)", (list(running),))
    assert {(state, attempt) for _, state, attempt in rows} == {("succeeded", 1)}
    ended = query(dsn, "SELECT job_id, count(*) FROM executions WHERE phase = 'end' GROUP BY job_id")
    assert dict(ended) == dict.fromkeys(running, 1)
    assert_untouched(dsn, [i for i in ids if i not in running])
    assert states(dsn) == {"succeeded": 10, "queued": 10}
    assert worker_rows(dsn) == 0

    # Nothing that finished runs again: a second worker drains only the ten that never started.
    second = start_worker("--burst", "--concurrency", "10")
    assert second.wait(timeout=30) == 0
    assert states(dsn) == {"succeeded": 20}
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") == 20
    assert scalar(dsn, "SELECT count(DISTINCT job_id) FROM executions WHERE phase = 'start'") == 20


def test_a_short_shutdown_timeout_releases_running_jobs_without_spending_an_attempt(
    dsn, start_worker, add_jobs
) -> None:
    ids, worker = fill_slots(dsn, add_jobs, start_worker, 30, "--shutdown-timeout", "0.5s")
    worker.send(signal.SIGTERM)
    # The sync handlers sleep for 30 s and cannot be killed; the process must not wait for their threads.
    assert worker.wait(timeout=15) == 0, worker.log()[-2000:]
    assert "releasing 10 job(s) still running" in worker.log()
    assert_untouched(dsn, ids)
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'end'") == 0
    assert worker_rows(dsn) == 0


def test_a_second_signal_skips_the_wait(dsn, start_worker, add_jobs) -> None:
    ids, worker = fill_slots(dsn, add_jobs, start_worker, 30)
    worker.send(signal.SIGTERM)
    wait_for(lambda: "waiting up to 30s for 10 running job(s)" in worker.log(), 10, "the graceful wait to begin")
    worker.send(signal.SIGINT)
    assert worker.wait(timeout=15) == 0, worker.log()[-2000:]
    assert "second signal: releasing running jobs now" in worker.log()
    assert_untouched(dsn, ids)
    assert worker_rows(dsn) == 0
