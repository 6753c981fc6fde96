"""Several worker processes drain one queue: every job runs exactly once, on its first attempt, and clean exits
leave no job running and no worker row behind."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from harness import query, states, worker_rows


def assert_each_ran_once(dsn: str, ids: list[int]) -> None:
    runs = dict(query(dsn, "SELECT job_id, count(*) FROM executions GROUP BY job_id"))
    assert len(runs) == len(ids)
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}, {job: n for job, n in runs.items() if n != 1}
    assert states(dsn) == {"succeeded": len(ids)}
    assert query(dsn, "SELECT DISTINCT attempt FROM sched_jobs_all") == [(1,)]
    assert query(dsn, "SELECT DISTINCT attempt FROM executions") == [(1,)]
    assert worker_rows(dsn) == 0


def test_three_processes_run_3000_jobs_exactly_once(dsn, start_worker, add_jobs) -> None:
    ids = add_jobs("count", 1500) + add_jobs("count_sync", 1500)
    workers = [start_worker("--burst", "--concurrency", "20", "--stale-after", "5s") for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=90) == 0, worker.log()[-2000:]
    assert_each_ran_once(dsn, ids)
    # All three took part: the claim shares the queue instead of one worker taking everything.
    pids = [row[0] for row in query(dsn, "SELECT DISTINCT pid FROM executions")]
    assert len(pids) == 3


def test_two_sched_worker_commands_drain_3000_jobs(dsn, start_worker, add_jobs) -> None:
    sched = shutil.which("sched") or str(Path(sys.executable).with_name("sched"))
    ids = add_jobs("count", 3000)
    workers = [start_worker("--burst", "--concurrency", "20", command=[sched, "worker"]) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=90) == 0, worker.log()[-2000:]
        assert "burst: nothing ready and nothing running; exiting" in worker.log()
    assert_each_ran_once(dsn, ids)
