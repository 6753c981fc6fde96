"""A worker that dies without a word (SIGKILL) loses its jobs to the reaper: another worker, or `sched reap`,
requeues them once its heartbeat is stale, and they finish on the next attempt. A job that kills its worker
every time spends its attempts and fails instead of looping forever (docs/protocol.md, "Reaper")."""

from __future__ import annotations

import json
import signal
import time

from harness import query, scalar, wait_for, worker_rows


def run_rows(dsn: str, phase: str) -> set[tuple[int, int]]:
    return set(query(dsn, "SELECT job_id, attempt FROM executions WHERE phase = %s", (phase,)))


def test_another_worker_requeues_a_killed_workers_jobs(dsn, start_worker, add_jobs) -> None:
    ids = add_jobs("hang_first", 4)
    doomed = start_worker("--concurrency", "4", "--stale-after", "2s")
    wait_for(lambda: len(run_rows(dsn, "start")) == 4, 20, "four jobs to start")
    doomed.send(signal.SIGKILL)
    assert doomed.wait(timeout=10) == -signal.SIGKILL
    assert query(dsn, "SELECT DISTINCT state::text, attempt FROM sched_jobs_all") == [("running", 1)]

    rescuer = start_worker("--concurrency", "4", "--stale-after", "2s")
    # Stale after 2 s, found by the rescuer's next reap (every 5 s, jittered up to 6 s); generous slack on top.
    wait_for(lambda: run_rows(dsn, "end") == {(i, 2) for i in ids}, 2 + 6 + 12, "the jobs to finish on attempt 2")
    wait_for(
        lambda: query(dsn, "SELECT DISTINCT state::text, attempt FROM sched_jobs_all") == [("succeeded", 2)],
        10,
        "the outcomes to be written",
    )
    assert run_rows(dsn, "start") == {(i, a) for i in ids for a in (1, 2)}
    assert "reaper: requeued 4 job(s), failed 0, removed 1 dead worker(s)" in rescuer.log()
    # The dead worker's row is gone; only the rescuer remains.
    assert worker_rows(dsn) == 1
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait(timeout=15) == 0
    assert worker_rows(dsn) == 0


def test_sched_reap_requeues_a_killed_workers_jobs(dsn, sched, start_worker, add_jobs) -> None:
    ids = add_jobs("hang_first", 3)
    doomed = start_worker("--concurrency", "3", "--stale-after", "2s")
    wait_for(lambda: len(run_rows(dsn, "start")) == 3, 20, "three jobs to start")
    doomed.send(signal.SIGKILL)
    doomed.wait(timeout=10)

    # Before the heartbeat is stale the reaper leaves the jobs alone.
    early = sched("reap", "--json")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout) == {"requeued": [], "failed": [], "workers_removed": 0}

    def reaped() -> bool:
        result = sched("reap", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["requeued"] == ids

    wait_for(reaped, 15, "sched reap to requeue the jobs", interval=0.5)
    rows = query(dsn, "SELECT state::text, attempt, worker_id, error FROM sched_jobs_all ORDER BY id")
    assert rows == [("queued", 1, None, "worker lost (attempt 1 of 3)")] * 3
    assert worker_rows(dsn) == 0

    finisher = start_worker("--burst", "--concurrency", "3")
    assert finisher.wait(timeout=30) == 0
    assert query(dsn, "SELECT DISTINCT state::text, attempt, error FROM sched_jobs_all") == [("succeeded", 2, None)]
    assert run_rows(dsn, "end") == {(i, 2) for i in ids}


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(dsn, sched, start_worker) -> None:
    added = sched("add", "suicide", "--max-attempts", "2")
    assert added.returncode == 0, added.stderr
    job_id = int(added.stdout)
    deadline = time.monotonic() + 45
    deaths = 0
    while scalar(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,)) != "failed":
        assert time.monotonic() < deadline, "the job never failed"
        if scalar(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,)) == "queued":
            worker = start_worker("--concurrency", "1", "--stale-after", "2s")
            assert worker.wait(timeout=20) == -signal.SIGKILL, worker.log()[-2000:]
            deaths += 1
        reaped = sched("reap")
        assert reaped.returncode == 0, reaped.stderr
        time.sleep(0.5)
    assert deaths == 2
    row = query(dsn, "SELECT attempt, max_attempts, error, finished_at IS NOT NULL FROM sched_jobs_all")
    assert row == [(2, 2, "worker lost (attempt 2 of 2)", True)]
    assert run_rows(dsn, "run") == {(job_id, 1), (job_id, 2)}
    assert worker_rows(dsn) == 0
