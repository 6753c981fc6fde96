"""`sched worker --processes N`: the supervisor restarts a child that dies, and SIGTERM drains the whole group."""

from __future__ import annotations

import os
import signal

from harness import query, scalar, wait_for


def worker_pids(dsn: str) -> set[int]:
    return {row[0] for row in query(dsn, "SELECT pid FROM sched_workers")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_child_is_restarted_and_sigterm_drains_the_group(dsn, start_worker, add_jobs) -> None:
    supervisor = start_worker("--processes", "2", "--concurrency", "2", "--stale-after", "2s")
    first = wait_for(lambda: len(p := worker_pids(dsn)) == 2 and p, 30, "two worker processes")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(dsn) - first) == 1, 30, "a replacement worker process")
    assert "worker process" in supervisor.log() and "exited with -9; restarting" in supervisor.log()
    survivors = worker_pids(dsn) - {victim}
    assert len(survivors) == 2 and all(alive(pid) for pid in survivors)

    ids = add_jobs("sleepy", 4, '{"seconds": 2}')
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") == 4, 20, "four jobs")
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 0, supervisor.log()[-3000:]
    assert not any(alive(pid) for pid in survivors)
    rows = query(dsn, "SELECT DISTINCT state::text, attempt FROM sched_jobs_all WHERE id = ANY(%s)", (ids,))
    assert rows == [("succeeded", 1)]
    # Both live children deregistered; only the killed one's row may wait for a reaper.
    assert worker_pids(dsn) <= {victim}
