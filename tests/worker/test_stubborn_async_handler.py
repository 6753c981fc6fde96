"""An async handler that does not stop when cancelled (it swallows the cancellation, or its cleanup hangs) cannot
hold its slot, its job's outcome or the worker's shutdown hostage: shortly after the cancellation the worker
stops waiting for it, records the run's end (timed out, released at shutdown) and a fresh runner takes the slot
(docs/protocol.md, "Timeouts" and "Shutdown")."""

from __future__ import annotations

import asyncio
import signal
import time

from harness import APP_MODULE, APP_SOURCE, query, wait_for
from inprocess import in_process_worker

from pgsched import repository
from pgsched.models import NewJob
from pgsched.worker import Registry


def _stubborn(started: asyncio.Event, released: asyncio.Event) -> Registry:
    registry = Registry()

    @registry.task("stubborn")
    async def stubborn(payload, ctx):
        started.set()
        while not released.is_set():  # the test lets it go at the end
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # ignores every cancellation

    return registry


async def test_an_async_handler_that_ignores_its_timeout_is_left_behind_and_its_job_fails(dsn, conn) -> None:
    started, released = asyncio.Event(), asyncio.Event()
    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="stubborn", timeout_s=0.3)]))
    async with in_process_worker(dsn, _stubborn(started, released), concurrency=1) as worker:
        executor = worker.worker.executor
        await worker.claim(1)
        stuck = worker.start_next()
        await started.wait()
        await asyncio.sleep(0.4)
        await executor.watch_once(time.monotonic())  # past its timeout: cancelled, and it ignores that
        await asyncio.sleep(executor.ABANDON_AFTER_S + 0.2)
        await executor.watch_once(time.monotonic())
        assert executor.running == {} and executor.in_flight == 0
        assert await worker.flush()
        assert query(dsn, "SELECT id, state::text, error FROM sched_jobs_all") == [
            (job_id, "queued", "timed out after 0.3s")
        ]
        released.set()
        await asyncio.wait_for(stuck, 5)
        assert executor.abandoned_tasks == 0


async def test_shutdown_does_not_wait_for_an_async_handler_that_ignores_its_cancellation(dsn, conn) -> None:
    started, released = asyncio.Event(), asyncio.Event()
    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="stubborn")]))
    async with in_process_worker(dsn, _stubborn(started, released), concurrency=1) as worker:
        executor = worker.worker.executor
        await worker.claim(1)
        stuck = worker.start_next()
        await started.wait()
        forced = asyncio.Event()
        forced.set()  # a second SIGTERM
        await asyncio.wait_for(executor.finish_running(0.1, forced), timeout=executor.ABANDON_AFTER_S + 3)
        assert await worker.flush()
        assert query(dsn, "SELECT id, state::text, attempt FROM sched_jobs_all") == [(job_id, "queued", 0)]
        released.set()
        await asyncio.wait_for(stuck, 5)
        assert executor.abandoned_tasks == 0


STUBBORN_SOURCE = """

@task("stubborn")
async def stubborn(payload, ctx):
    while True:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
"""


def test_a_worker_process_exits_after_sigterm_though_an_async_handler_ignores_cancellation(
    dsn, conn, start_worker, app_dir
) -> None:
    (app_dir / f"{APP_MODULE}.py").write_text(APP_SOURCE + "\nimport asyncio\n" + STUBBORN_SOURCE)
    [job_id] = (e.id for e in repository.enqueue_many(conn, [NewJob(task="stubborn")]))
    worker = start_worker("--concurrency", "1", "--shutdown-timeout", "1s")
    wait_for(lambda: query(dsn, "SELECT state::text FROM sched_jobs_all") == [("running",)], 20, "the job to start")
    time.sleep(0.5)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()[-3000:]
    assert query(dsn, "SELECT id, state::text, attempt FROM sched_jobs_all") == [(job_id, "queued", 0)]
