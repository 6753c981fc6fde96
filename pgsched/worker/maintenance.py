"""The worker's maintenance services, run one after another on the control connection: heartbeat, cancel
poll, reaper, due-job promotion, schedule ticks, the ready-job probe and metrics. Each has ``interval`` and
``run_once(conn)``; ``Maintenance`` runs each when it is due, and one failure delays the round, never the next
one. One loop runs them all, not one each: they share the control connection, on which two transactions must
never interleave."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection
from pgsched.worker.config import WorkerConfig
from pgsched.worker.link import Link
from pgsched.worker.registry import TaskSpec


class Service(Protocol):
    """One maintenance duty."""

    def interval(self) -> float:
        """Seconds until the next run, asked after each run."""
        ...

    async def run_once(self, conn: AsyncConnection) -> None: ...


class Heartbeat:
    """Registers the worker with its liveness contract (its stale-after and timeout grace, by which every
    reaper judges it) and beats, so the reaper knows it is alive; registers again if it was reaped."""

    def __init__(self, worker_id: str, config: WorkerConfig, tasks: Iterable[str], running: Callable[[], int]) -> None:
        self._worker_id = worker_id
        self._config = config
        self._tasks = sorted(tasks)
        self._running = running
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.last_beat = 0.0

    def interval(self) -> float:
        return self._config.heartbeat_interval

    async def register(self, conn: AsyncConnection) -> None:
        config = self._config
        await repository.register_worker(
            conn,
            self._worker_id,
            self.host,
            self.pid,
            config.queues,
            self._tasks,
            config.concurrency,
            stale_after_s=config.stale_after,
            timeout_grace_s=config.timeout_grace,
        )
        self.last_beat = time.monotonic()

    async def run_once(self, conn: AsyncConnection) -> None:
        if not await repository.heartbeat_worker(conn, self._worker_id, self._running()):
            logger.warning("worker row was reaped; registering again")
            await self.register(conn)
        self.last_beat = time.monotonic()


class CancelPoll:
    """Asks which running runs had their cancel requested (by lease): a NOTIFY may have been missed (or LISTEN
    is off)."""

    def __init__(self, worker_id: str, running: Callable[[], Collection[Any]], cancel: Callable[[set[int]], None]):
        self._worker_id = worker_id
        self._running = running
        self._cancel = cancel

    def interval(self) -> float:
        return 1.0

    async def run_once(self, conn: AsyncConnection) -> None:
        if self._running():
            self._cancel(await repository.cancel_requested(conn, self._worker_id))


class Reaper:
    """Requeues or fails the jobs of dead workers and overdue runs (one reaper at a time across all workers;
    each worker judged by the contract it registered, docs/protocol.md, "Reaper")."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config

    def interval(self) -> float:
        # Jittered, so that workers started together do not all try at once.
        return self._config.reap_interval * random.uniform(0.8, 1.2)

    async def run_once(self, conn: AsyncConnection) -> None:
        result = await repository.reap_stale(conn)
        if result.requeued or result.failed or result.workers_removed:
            logger.warning(
                "reaper: requeued {} job(s), failed {}, removed {} dead worker(s)",
                len(result.requeued),
                len(result.failed),
                result.workers_removed,
            )


class ScheduleTicker:
    """Adds the jobs of schedules that fell due (any worker may; the database makes each tick happen once)."""

    def interval(self) -> float:
        return 1.0

    async def run_once(self, conn: AsyncConnection) -> None:
        enqueued = await repository.tick_schedules(conn)
        if enqueued:
            logger.info("schedules: enqueued {} job(s)", enqueued)


class DuePromoter:
    """Moves deferred jobs that fell due into the ready index. The claim's sort of due rows stays small, and a
    claim from positions reads only the rows due in the last 2 s: older ones wait for this (or a full pass).
    Each queue is read from where the last pass left it while vacuum is held back (repository.DueMarks). A pass
    that promoted jobs wakes the workers of their queues (a NOTIFY), and this worker's fetcher directly when they
    are of its queues (without LISTEN too): a retry whose backoff ended, or a due time a worker never heard of,
    would otherwise wait for the next poll."""

    def __init__(self, queues: Iterable[str] = (), wake: Callable[[], None] | None = None) -> None:
        self._marks = repository.DueMarks()
        self._queues = set(queues)
        self._wake = wake

    def interval(self) -> float:
        return 1.0

    async def run_once(self, conn: AsyncConnection) -> None:
        promoted = await repository.promote_due_by_queue(conn, marks=self._marks)
        if self._wake is not None and not self._queues.isdisjoint(promoted):
            self._wake()


class ReadyProbe:
    """Looks for ready jobs before where the fetcher's claims of each queue read the ready index or a group (a job
    given back, a producer's late commit: docs/protocol.md, "Where a claim starts reading"), moves those positions
    back, and wakes the fetcher. Each queue's probe runs at a period that follows its cost (repository.probe_ready)."""

    def __init__(self, marks: dict[str, repository.ReadyMarks], tasks: Iterable[str], wake: Callable[[], None]) -> None:
        self._marks = marks
        self._tasks = sorted(tasks)
        self._wake = wake

    def interval(self) -> float:
        return repository.ReadyMarks.PROBE_MIN_S

    async def run_once(self, conn: AsyncConnection) -> None:
        for queue, marks in self._marks.items():
            if await repository.probe_ready(conn, queue, self._tasks, marks):
                logger.debug("ready jobs of {} found before where claims read; reading from them next", queue)
                self._wake()


class MetricsRefresh:
    """Updates the queue depth and lag gauges."""

    def __init__(self, metrics: Any, queues: list[str]) -> None:
        self._metrics = metrics
        self._queues = queues

    def interval(self) -> float:
        return 0.0  # the metrics rate-limit themselves

    async def run_once(self, conn: AsyncConnection) -> None:
        await self._metrics.refresh(conn, self._queues)


async def declare_schedules(conn: AsyncConnection, tasks: Iterable[TaskSpec], default_queue: str) -> None:
    """Record the schedules handlers declare with ``@task(..., cron=...)``, on their ``cron_queue`` or else
    ``default_queue`` (the worker's first queue)."""
    from pgsched.schedules import build_schedule

    specs = [
        build_schedule(spec.name, spec.cron, spec.name, queue=spec.cron_queue or default_queue)
        for spec in tasks
        if spec.cron
    ]
    for name in await repository.upsert_code_schedules(conn, specs):
        logger.info("schedule {} declared in code recorded", name)


class Maintenance:
    """Runs each service when it is due, in order, on the control connection."""

    TICK_S = 0.25

    def __init__(self, link: Link, services: Sequence[Service]) -> None:
        self._link = link
        self.services = list(services)
        self._next_at: dict[int, float] = {}  # by id(service)

    async def run(self) -> None:
        while True:
            if not await self.run_due():
                continue  # the connection was lost: reconnect at once
            await asyncio.sleep(self.TICK_S)

    async def run_due(self) -> bool:
        """Run the services that are due; False when the connection was lost meanwhile."""
        async with self._link.attempt("maintenance") as attempt:
            conn = await self._link.get()
            for service in self.services:
                now = time.monotonic()
                if now >= self._next_at.get(id(service), 0.0):
                    self._next_at[id(service)] = now + service.interval()
                    await service.run_once(conn)
        return not attempt.connection_lost
