"""A cancel request for a job this worker claimed ahead and has not started yet: the handler never starts and
the job ends cancelled (docs/protocol.md, "Cancel": once requested, the job is never started again)."""

from __future__ import annotations

import asyncio

from harness import query
from inprocess import in_process_worker

from pgsched import repository
from pgsched.models import NewJob
from pgsched.worker import Registry
from pgsched.worker.maintenance import CancelPoll


def _registry(ran: list[int]) -> Registry:
    registry = Registry()

    @registry.task("quick")
    async def quick(payload, ctx):
        ran.append(ctx.job_id)
        return {"ran": True}

    return registry


async def test_a_cancel_notify_for_a_job_claimed_ahead_keeps_its_handler_from_starting(dsn, conn) -> None:
    ran: list[int] = []
    first, second = (e.id for e in repository.enqueue_many(conn, [NewJob(task="quick"), NewJob(task="quick")]))
    async with in_process_worker(dsn, _registry(ran), listen=True, concurrency=1) as worker:
        listening = await worker.worker.listen_link.get()
        await listening.listen([repository.cancel_channel()])
        assert [j.id for j in await worker.claim(2)] == [first, second]  # the second waits for the slot
        assert repository.cancel_job(conn, second).state == "running"
        await worker.worker.listener.receive_once(listening, timeout=5)
        while worker.worker.executor.ready:
            await worker.run_next()
        assert await worker.flush()
    assert ran == [first]
    assert query(dsn, "SELECT id, state::text FROM sched_jobs_all ORDER BY id") == [
        (first, "succeeded"),
        (second, "cancelled"),
    ]


async def test_the_cancel_poll_finds_a_job_claimed_ahead_while_nothing_runs(dsn, conn) -> None:
    ran: list[int] = []
    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="quick")]))
    async with in_process_worker(dsn, _registry(ran), concurrency=1) as worker:
        await worker.claim(1)
        assert repository.cancel_job(conn, job_id).state == "running"
        await worker.service(CancelPoll).run_once(await worker.control())
        while worker.worker.executor.ready:
            await worker.run_next()
        await asyncio.sleep(0)
        assert await worker.flush()
        assert worker.worker.executor.in_flight == 0
    assert ran == []
    assert query(dsn, "SELECT state::text, error FROM sched_jobs_all") == [("cancelled", "cancelled on request")]
