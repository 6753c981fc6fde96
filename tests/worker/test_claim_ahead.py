"""Claiming ahead: a worker busy with short jobs holds a few more than its free slots, and gives back any that
find no slot in time, so jobs never wait on a busy worker while another could run them."""

from __future__ import annotations

import time

from harness import free_port, get, health, query, sample, scalar, wait_for


def test_jobs_held_ahead_go_to_an_idle_worker_when_long_jobs_fill_the_slots(dsn, start_worker, add_jobs) -> None:
    # Thousands of no-op jobs first teach worker A a high finishing rate, so it claims ahead; the long jobs
    # behind them then fill its two slots while the ones it holds ahead can only wait.
    add_jobs("sched.noop", 3000, priority=10)
    long_ids = add_jobs("sleepy", 6, payload='{"seconds": 6}')
    port = free_port()
    first = start_worker("--concurrency", "2", "--health-port", str(port))
    wait_for(
        lambda: scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") >= 2,
        timeout=60,
        message="worker A to start two long jobs",
    )
    second = start_worker("--concurrency", "4")
    started = time.monotonic()
    wait_for(
        lambda: scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") == len(long_ids),
        timeout=30,
        message="all six long jobs to start",
    )
    # A's long jobs take 6 s: anything it had kept would start only after them.
    assert time.monotonic() - started < 4.5, "a job held ahead waited for a busy worker"
    assert "gave back" in first.log(), first.log()[-2000:]
    by_worker = dict(query(dsn, "SELECT pid, count(*) FROM executions WHERE phase = 'start' GROUP BY pid"))
    assert by_worker == {first.pid: 2, second.pid: 4}
    # Giving a job back does not spend an attempt.
    assert query(dsn, "SELECT DISTINCT attempt FROM executions") == [(1,)]
    # A reports the two jobs it runs, not the ones it held and gave back.
    assert health(port)[1]["running"] == 2
    metrics = get(port, "/metrics")[1]
    assert sample(metrics, "sched_worker_running_jobs") == 2
    assert sample(metrics, "sched_jobs_released_total", queue="default", task="sleepy") >= 1
