"""No background task of a worker dies silently: one that fails unexpectedly is logged with its traceback,
makes /healthz fail, and stops the worker, which releases its running job and exits 1."""

from __future__ import annotations

import asyncio

from harness import query
from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection
from pgsched.models import NewJob
from pgsched.worker import Registry, Worker, WorkerConfig


async def test_a_failed_background_task_stops_the_worker_with_exit_code_1(dsn, conn) -> None:
    registry = Registry()
    started = asyncio.Event()

    @registry.task("long")
    async def long(payload, ctx):
        started.set()
        await asyncio.sleep(30)

    class Broken:
        def interval(self) -> float:
            return 0.0

        async def run_once(self, conn: AsyncConnection) -> None:
            if started.is_set():
                raise RuntimeError("maintenance broke")

    repository.enqueue_many(conn, [NewJob(task="long")])
    config = WorkerConfig(concurrency=1, listen=False, poll_interval=0.1, shutdown_timeout=0.2)
    worker = Worker(dsn, config, registry)
    worker.maintenance.services.append(Broken())
    records: list[dict] = []
    logger.enable("pgsched")
    sink = logger.add(lambda message: records.append(message.record), format="{message}")
    try:
        assert await asyncio.wait_for(worker.run(), 30) == 1
    finally:
        logger.remove(sink)
        logger.disable("pgsched")
    healthy, body = worker.health()
    assert not healthy and "its maintenance failed" in body["reasons"]
    [failure] = [r for r in records if r["level"].name == "ERROR"]
    assert failure["message"] == "the worker's maintenance failed unexpectedly; stopping the worker"
    assert failure["exception"].type is RuntimeError and failure["exception"].traceback is not None
    # Released without spending an attempt, and the worker deregistered.
    assert query(dsn, "SELECT state::text, attempt FROM sched_jobs_all") == [("queued", 0)]
    assert query(dsn, "SELECT count(*) FROM sched_workers") == [(0,)]
