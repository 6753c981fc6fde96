"""A cancel request sticks and never switches off a timeout: a handler that raises once it sees the request
ends its job cancelled (not retried), and a sync handler that ignores the request is still abandoned at its
timeout, the job ending cancelled."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

from harness import query, wait_for
from inprocess import in_process_worker, until

from pgsched import repository
from pgsched.models import NewJob
from pgsched.worker import Registry
from pgsched.worker.maintenance import CancelPoll


async def test_a_cancel_notify_stops_the_run_of_its_job(dsn, conn) -> None:
    registry = Registry()
    started = asyncio.Event()

    @registry.task("waits")
    async def waits(payload, ctx):
        started.set()
        await asyncio.sleep(30)

    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="waits")]))
    async with in_process_worker(dsn, registry, listen=True) as worker:
        listening = await worker.worker.listen_link.get()
        await listening.listen([repository.cancel_channel()])
        await worker.claim(1)
        run = worker.start_next()
        await started.wait()
        repository.cancel_job(conn, job_id)
        await worker.worker.listener.receive_once(listening, timeout=5)
        await asyncio.wait_for(run, 5)
        assert await worker.flush()
    assert query(dsn, "SELECT state::text, error FROM sched_jobs_all") == [("cancelled", "cancelled on request")]


async def test_a_handler_that_raises_after_its_cancel_was_requested_ends_cancelled(dsn, conn) -> None:
    registry = Registry()
    started = threading.Event()

    @registry.task("stops_by_raising")
    def stops_by_raising(payload, ctx):
        started.set()
        deadline = time.monotonic() + 10
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("saw the cancel request")

    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="stops_by_raising", max_attempts=3)]))
    async with in_process_worker(dsn, registry) as worker:
        await worker.claim(1)
        run = worker.start_next()
        await until(started.is_set, message="the handler to start")
        assert repository.cancel_job(conn, job_id).state == "running"
        await worker.service(CancelPoll).run_once(await worker.control())
        await asyncio.wait_for(run, 5)
        assert await worker.flush()
    assert query(dsn, "SELECT state::text, attempt, error FROM sched_jobs_all") == [
        ("cancelled", 1, "cancelled on request")
    ]


async def test_a_cancel_request_does_not_switch_off_a_sync_jobs_timeout(dsn, conn) -> None:
    registry = Registry()
    started = threading.Event()
    finished = threading.Event()

    @registry.task("ignores_cancel")
    def ignores_cancel(payload, ctx):
        started.set()
        time.sleep(3)
        finished.set()

    job = NewJob(task="ignores_cancel", max_attempts=3, timeout_s=0.5)
    [job_id] = (e.id for e in repository.enqueue_many(conn, [job]))
    async with in_process_worker(dsn, registry, concurrency=1) as worker:
        executor = worker.worker.executor
        await worker.claim(1)
        run = worker.start_next()
        await until(started.is_set, message="the handler to start")
        repository.cancel_job(conn, job_id)
        await worker.service(CancelPoll).run_once(await worker.control())
        await asyncio.sleep(0.6)
        await executor.watch_once(time.monotonic())
        # The runner stops waiting at the timeout, though the handler goes on in its thread.
        await asyncio.wait_for(run, 1)
        assert not finished.is_set()
        assert executor.abandoned_threads == 1
        assert executor.running == {} and executor.in_flight == 0
        assert await worker.flush()
        assert query(dsn, "SELECT state::text, attempt, error FROM sched_jobs_all") == [
            ("cancelled", 1, "cancelled on request")
        ]
        await until(lambda: executor.abandoned_threads == 0, message="the abandoned handler to return")


def test_a_worker_abandons_a_cancelled_sync_job_at_its_timeout(dsn, sched, start_worker, add_jobs) -> None:
    [job_id] = add_jobs("plain_sync", payload='{"seconds": 8}', timeout_s=1.5)
    worker = start_worker("--concurrency", "1", "--poll-interval", "0.2s")
    wait_for(lambda: query(dsn, "SELECT 1 FROM executions WHERE phase = 'start'"), 20, "the job to start")
    started = time.monotonic()
    assert sched("cancel", str(job_id)).returncode == 0
    # The handler ignores the request and sleeps on; at its timeout the worker stops waiting for it.
    wait_for(lambda: query(dsn, "SELECT state::text FROM sched_jobs_all") == [("cancelled",)], 10, "the cancel")
    assert time.monotonic() - started < 5
    assert query(dsn, "SELECT attempt, error FROM sched_jobs_all") == [(1, "cancelled on request")]
    assert query(dsn, "SELECT phase FROM executions") == [("start",)]
    # The slot is free again at once, though the abandoned handler still sleeps.
    [after] = add_jobs("count")
    wait_for(lambda: query(dsn, "SELECT 1 FROM executions WHERE job_id = %s", (after,)), 5, "the next job")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()[-3000:]
