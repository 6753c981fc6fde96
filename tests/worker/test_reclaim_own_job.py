"""A worker that claims its own job again (its first run still going after the reaper took the job back) keeps
the two runs apart by lease: the old run's late outcome is fenced off, the job ends with the new run's outcome,
and no slot is lost."""

from __future__ import annotations

import asyncio
import signal
import time

from harness import query, scalar, states, wait_for
from inprocess import in_process_worker

from pgsched import repository
from pgsched.models import NewJob
from pgsched.worker import Registry
from pgsched.worker.maintenance import Heartbeat


async def test_two_runs_of_one_job_in_one_worker_end_apart(dsn, conn) -> None:
    registry = Registry()
    started: dict[int, asyncio.Event] = {1: asyncio.Event(), 2: asyncio.Event()}
    release: dict[int, asyncio.Event] = {1: asyncio.Event(), 2: asyncio.Event()}

    @registry.task("gate")
    async def gate(payload, ctx):
        started[ctx.attempt].set()
        await release[ctx.attempt].wait()
        return {"attempt": ctx.attempt}

    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="gate")]))
    async with in_process_worker(dsn, registry, concurrency=2, stale_after=2.0) as worker:
        executor = worker.worker.executor
        [first] = await worker.claim(1)
        run_a = worker.start_next()
        await started[1].wait()
        # The worker looks dead (its heartbeat is older than its stale-after): the reaper takes the job back,
        # and the worker, still alive, registers again and claims the same job.
        query(dsn, "UPDATE sched_workers SET heartbeat_at = now() - interval '1 hour'")
        reaped = await repository.reap_stale(await worker.control())
        assert reaped.requeued == [job_id]
        await worker.service(Heartbeat).run_once(await worker.control())
        [second] = await worker.claim(1)
        assert (second.id, second.attempt) == (job_id, 2) and second.lease != first.lease
        run_b = worker.start_next()
        await started[2].wait()
        assert set(executor.running) == {first.lease, second.lease}

        release[1].set()
        await run_a
        assert await worker.flush()
        assert query(dsn, "SELECT state::text, attempt FROM sched_jobs_all") == [("running", 2)]

        release[2].set()
        await run_b
        assert await worker.flush()
        assert query(dsn, "SELECT state::text, attempt, result FROM sched_jobs_all") == [
            ("succeeded", 2, {"attempt": 2})
        ]
        assert executor.running == {} and executor.in_flight == 0


def test_a_worker_stopped_past_its_stale_after_runs_its_reclaimed_job_to_success(
    dsn, sched, start_worker, add_jobs
) -> None:
    [job_id] = add_jobs("sleepy", payload='{"seconds": 4}')
    worker = start_worker("--concurrency", "2", "--stale-after", "2s", "--poll-interval", "0.2s")
    wait_for(lambda: query(dsn, "SELECT 1 FROM executions WHERE phase = 'start'"), 20, "the job to start")
    worker.send(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        reaped = sched("reap", "--json")
        assert reaped.returncode == 0, reaped.stderr
        assert query(dsn, "SELECT state::text FROM sched_jobs_all") == [("queued",)]
    finally:
        worker.send(signal.SIGCONT)
    # The same worker claims the job again as attempt 2 while attempt 1 still sleeps; attempt 1's end is fenced
    # off and attempt 2's end is the job's.
    wait_for(lambda: states(dsn) == {"succeeded": 1}, 20, "the second run to succeed")
    assert query(dsn, "SELECT attempt FROM sched_jobs_all") == [(2,)]
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE job_id = %s AND phase = 'end'", (job_id,)) == 2
    # Both slots are still there: two new jobs run side by side.
    add_jobs("sleepy", 2, payload='{"seconds": 1.5}')
    wait_for(lambda: states(dsn) == {"succeeded": 3}, 20, "two more jobs")
    starts = query(
        dsn, "SELECT extract(epoch FROM at)::float8 FROM executions WHERE phase = 'start' AND job_id <> %s", (job_id,)
    )
    assert abs(starts[0][0] - starts[1][0]) < 1.0, "the two jobs ran one after the other: a slot was lost"
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()[-3000:]
