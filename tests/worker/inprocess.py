"""An in-process worker for tests: a real ``Worker`` against the test's database, in the test's event loop, whose
parts a test drives one step at a time (claim once, run a job, flush once, run one maintenance service) instead
of starting its loops. Use it in an ``async def`` test (tests/worker/conftest.py runs those)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from pgsched.db import AsyncConnection
from pgsched.models import ClaimedJob
from pgsched.worker import Registry, Worker, WorkerConfig


class Steps:
    """One step of a worker's pipeline per call."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def claim(self, count: int) -> list[ClaimedJob]:
        """Claim up to ``count`` jobs, as the fetcher does once; returns every job waiting for a slot."""
        assert await self.worker.fetcher.claim_once(count) is not None, "the claim failed"
        return list(self.worker.executor.ready)

    def start_next(self) -> asyncio.Task:
        """Start the next claimed job in a task of its own; the task ends with the run."""
        return asyncio.create_task(self.worker.executor.run_next())

    async def run_next(self) -> None:
        """Run the next claimed job to its end."""
        await self.worker.executor.run_next()

    async def flush(self) -> bool:
        """Write the buffered outcomes once; True when written."""
        return await self.worker.outcomes.flush_once()

    async def control(self) -> AsyncConnection:
        """The control connection, for a maintenance service's ``run_once``."""
        return await self.worker.control_link.get()

    def service(self, kind: type) -> Any:
        """The worker's maintenance service of this class."""
        [found] = [s for s in self.worker.maintenance.services if isinstance(s, kind)]
        return found


@contextlib.asynccontextmanager
async def in_process_worker(dsn: str, registry: Registry, **options: Any) -> AsyncIterator[Steps]:
    """A registered worker (no loops running) with ``WorkerConfig(**options)``; LISTEN and claiming ahead are
    off unless asked for. Closed (and deregistered) at the end."""
    config = WorkerConfig(**{"listen": False, "claim_ahead": False, "concurrency": 4, **options})
    worker = Worker(dsn, config, registry)
    await worker.open()
    try:
        yield Steps(worker)
    finally:
        await worker.close()


async def until(condition: Callable[[], Any], timeout: float = 10.0, message: str = "a condition") -> Any:
    """Poll ``condition`` on the loop until it is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        await asyncio.sleep(0.01)
    return value
