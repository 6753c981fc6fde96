"""A server crash with asynchronous commit (SCHED_WORKER_COMMIT=off, the default) can lose a claim together with
the lease sequence's advance. A claimer's new connection skips the sequence ahead, so the next claim draws a new
lease (tests/chaos/test_lease_after_crash.py); should a lease come back all the same and the same worker claim that
job again, it holds two runs under one lease: the older run's claim no longer exists, so its
end must change nothing, and the newer run must end normally (docs/protocol.md, "Leases and fencing").

The crash is shown for real in tests/chaos/test_lease_after_crash.py; here its effect on the database (claim
rolled back, sequence set back) is reproduced on the shared server."""

from __future__ import annotations

import asyncio

from harness import query
from inprocess import in_process_worker, until

from pgsched import repository
from pgsched.models import NewJob
from pgsched.worker import Registry


async def test_a_claim_reissuing_a_lease_the_worker_holds_disowns_the_older_run(dsn, conn) -> None:
    registry = Registry()
    go = {1: asyncio.Event(), 2: asyncio.Event()}
    started: list[int] = []

    @registry.task("twice")
    async def twice(payload, ctx):
        n = len(started) + 1
        started.append(n)
        await go[n].wait()
        return {"run": n}

    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="twice")]))
    async with in_process_worker(dsn, registry, concurrency=2) as worker:
        [first] = await worker.claim(1)
        old = worker.start_next()
        await until(lambda: started == [1], message="the first run")
        # The crash: the claim was never written. A new session, as after a restart (its connection skips the
        # lease sequence ahead); then the sequence is set back anyway, to show the worker's own second line.
        conn.run("UPDATE sched_jobs SET state = 'queued', attempt = 0, worker_id = NULL, started_at = NULL")
        await worker.worker.claim_link.close()
        await worker.worker.claim_link.get()
        conn.run("SELECT setval('sched_job_lease_seq', %s, false)", [first.lease])
        [second] = await worker.claim(1)
        assert (second.id, second.lease) == (job_id, first.lease)
        new = worker.start_next()
        await until(lambda: started == [1, 2], message="the second run")
        go[1].set()
        await asyncio.wait_for(old, 5)
        assert await worker.flush()
        assert query(dsn, "SELECT state::text, result FROM sched_jobs_all") == [("running", None)]
        go[2].set()
        await asyncio.wait_for(new, 5)
        assert await worker.flush()
        assert worker.worker.executor.running == {} and worker.worker.executor.in_flight == 0
    assert query(dsn, "SELECT state::text, result FROM sched_jobs_all") == [("succeeded", {"run": 2})]
