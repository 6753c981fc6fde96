"""Shutdown gives back jobs claimed ahead that never started: they end queued, with the attempt the claim counted
taken back, and no handler ever ran them."""

from __future__ import annotations

import signal

import psycopg
from harness import query, wait_for, worker_rows

CONCURRENCY = 4


def test_sigterm_gives_back_jobs_claimed_ahead_but_not_started(dsn, start_worker, add_jobs) -> None:
    # Thousands of no-op jobs first teach the worker a high finishing rate, so it claims ahead; the long jobs
    # behind them fill its slots and the ones it holds ahead wait for a slot that does not free up.
    add_jobs("sched.noop", 3000, priority=10)
    long_ids = add_jobs("sleepy", 3 * CONCURRENCY, payload='{"seconds": 60}')
    # A short shutdown timeout: the running jobs are let go at once, so nothing waits out the worker's own
    # give-back of jobs held too long, which would hide a shutdown that forgot them.
    worker = start_worker("--concurrency", str(CONCURRENCY), "--shutdown-timeout", "0.05s")
    with psycopg.connect(dsn, autocommit=True) as watcher:

        def rows(sql: str) -> set[int]:
            return {row[0] for row in watcher.execute(sql, (long_ids,)).fetchall()}

        def held_ahead() -> set[int]:
            # Every slot runs a long job (each noted its start) and more long jobs are running in the database:
            # those are held by the worker, claimed but not started.
            started = rows("SELECT DISTINCT job_id FROM executions WHERE job_id = ANY(%s)")
            running = rows("SELECT id FROM sched_jobs_all WHERE state = 'running' AND id = ANY(%s)")
            return running - started if len(started) == CONCURRENCY else set()

        held = wait_for(
            held_ahead, timeout=60, message="the worker to hold long jobs ahead of its slots", interval=0.005
        )
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.log()[-2000:]
    rows = query(dsn, "SELECT state::text, attempt, worker_id FROM sched_jobs_all WHERE id = ANY(%s)", (list(held),))
    assert sorted(rows) == [("queued", 0, None)] * len(held), worker.log()[-2000:]
    assert query(dsn, "SELECT job_id, phase FROM executions WHERE job_id = ANY(%s)", (list(held),)) == []
    assert worker_rows(dsn) == 0
