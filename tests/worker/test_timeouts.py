"""Job timeouts (docs/protocol.md, "Timeouts"): an async handler is cancelled, a sync one is abandoned; either way
the attempt fails with "timed out", is retried after the backoff, and a late sync result or progress is fenced off."""

from __future__ import annotations

import json
import signal

from harness import query, scalar, wait_for


def job(dsn: str, job_id: int) -> dict:
    cols = "state::text AS state, attempt, error, result, progress, finished_at"
    with_names = query(
        dsn, f"SELECT row_to_json(j) FROM (SELECT {cols} FROM sched_jobs_all WHERE id = %s) j", (job_id,)
    )
    return with_names[0][0]


def started(dsn: str, job_id: int) -> dict[int, float]:
    rows = query(
        dsn, "SELECT attempt, extract(epoch FROM at) FROM executions WHERE job_id = %s AND phase = 'start'", (job_id,)
    )
    return {attempt: float(at) for attempt, at in rows}


def test_an_async_handler_times_out_and_is_retried_after_the_backoff(dsn, start_worker, add_jobs) -> None:
    [retried] = add_jobs("slow_async")
    [doomed] = add_jobs("slow_async", payload='{"always": true}', max_attempts=1)
    worker = start_worker("--concurrency", "2", "--poll-interval", "0.2s")

    # The first attempt fails with "timed out" and waits out its backoff in the queue.
    wait_for(
        lambda: (j := job(dsn, retried))["state"] == "queued" and j["attempt"] == 1 and j["error"],
        15,
        "the timed-out attempt to be queued for a retry",
        interval=0.05,
    )
    assert job(dsn, retried)["error"] == "timed out after 1s"
    wait_for(lambda: job(dsn, retried)["state"] == "succeeded", 15, "the retry to succeed")
    final = job(dsn, retried)
    assert (final["attempt"], final["result"], final["error"]) == (2, {"attempt": 2}, None)
    starts = started(dsn, retried)
    # 1 s timeout, then a backoff of 1 s times a jitter factor of at least 0.5.
    assert starts[2] - starts[1] >= 1.5
    assert query(dsn, "SELECT attempt FROM executions WHERE job_id = %s AND phase = 'end'", (retried,)) == [(2,)]

    wait_for(lambda: job(dsn, doomed)["state"] == "failed", 15, "the single-attempt job to fail")
    failed = job(dsn, doomed)
    assert (failed["attempt"], failed["error"], failed["result"]) == (1, "timed out after 1s", None)
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE job_id = %s AND phase = 'end'", (doomed,)) == 0
    assert "timed out after 1s" in worker.log()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_a_sync_handlers_late_result_and_progress_are_fenced_off(dsn, start_worker, add_jobs) -> None:
    [job_id] = add_jobs("late_sync")
    worker = start_worker("--concurrency", "2", "--poll-interval", "0.2s")
    # Attempt 1 outlives its 2 s timeout until attempt 2 runs, then reports progress and returns a result.
    wait_for(lambda: job(dsn, job_id)["state"] == "succeeded", 25, "the retry to succeed")
    wait_for(
        lambda: query(dsn, "SELECT 1 FROM executions WHERE job_id = %s AND phase = 'late-end'", (job_id,)),
        10,
        "the abandoned first attempt to return",
    )
    final = job(dsn, job_id)
    assert (final["attempt"], final["result"], final["error"]) == (2, {"from": 2}, None)
    assert final["progress"] is None, "the abandoned attempt's progress overwrote the newer attempt's state"
    log = worker.log()
    assert "timed out after 2s" in log
    assert f"progress of job {job_id} fenced off" in log
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert job(dsn, job_id) == final


def test_a_job_level_timeout_applies_to_sync_handlers(dsn, sched, start_worker) -> None:
    added = sched("add", "plain_sync", "--timeout", "1s", "--max-attempts", "1", "--payload", '{"seconds": 3}')
    assert added.returncode == 0, added.stderr
    job_id = int(added.stdout)
    worker = start_worker("--concurrency", "1", "--poll-interval", "0.2s")
    wait_for(lambda: job(dsn, job_id)["state"] == "failed", 15, "the job to time out")
    # The abandoned thread still finishes its sleep; what it returns changes nothing.
    wait_for(
        lambda: query(dsn, "SELECT 1 FROM executions WHERE job_id = %s AND phase = 'end'", (job_id,)),
        10,
        "the abandoned handler to return",
    )
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    final = job(dsn, job_id)
    assert (final["state"], final["attempt"], final["error"], final["result"]) == (
        "failed",
        1,
        "timed out after 1s",
        None,
    )
    assert json.loads(sched("status", str(job_id), "--json").stdout)["state"] == "failed"
