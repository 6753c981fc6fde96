"""The worker engine: wires the pipeline's parts and owns the worker's life (start, signals, graceful
shutdown, exit code). Each part owns its state:

- fetcher.py claims jobs for free slots (and a few ahead), and knows when to look again;
- executor.py runs them in slots, enforces timeouts and cancellation, and collects progress;
- outcomes.py turns each run's end into an outcome and writes outcomes in batches on its own connection;
- maintenance.py beats, polls cancel requests, reaps and ticks schedules on the control connection;
- listener.py wakes the fetcher on NOTIFY and passes on cancel requests;
- link.py holds the connections and decides what a failed database call means.

Only the repository talks SQL; these modules decide when to call it. Every background task is supervised:
one that fails unexpectedly is logged with its traceback, makes /healthz fail, and stops the worker, which
releases what it can and exits non-zero rather than carrying on half-dead."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from loguru import logger

from pgsched import migrate, repository
from pgsched.errors import DatabaseError, SchedError
from pgsched.worker.config import WorkerConfig
from pgsched.worker.executor import Executor
from pgsched.worker.fetcher import ClaimAhead, DueTimes, Fetcher
from pgsched.worker.link import Link
from pgsched.worker.listener import Listener
from pgsched.worker.maintenance import (
    CancelPoll,
    DuePromoter,
    Heartbeat,
    Maintenance,
    MetricsRefresh,
    ReadyProbe,
    Reaper,
    ScheduleTicker,
    Service,
    declare_schedules,
)
from pgsched.worker.outcomes import OutcomeBuffer
from pgsched.worker.registry import Registry
from pgsched.worker.stopping import Stop

__all__ = ["Worker", "WorkerConfig"]


class Worker:
    """One worker process's engine; ``await Worker(...).run()`` returns the exit code."""

    def __init__(self, dsn: str, config: WorkerConfig, registry: Registry, metrics: Any | None = None) -> None:
        self.config = config
        self.tasks = dict(registry.tasks)
        self.id = str(uuid.uuid4())
        self.metrics = metrics
        self.stop = Stop()
        # Claims and outcomes commit with config.commit (SCHED_WORKER_COMMIT), by default without waiting for
        # the WAL to reach disk or a standby. Losing the last of them in a server crash or a failover can only
        # roll a job back to an earlier state of its life (queued, or running under a worker that the reaper
        # then replaces), which the protocol already handles: at worst a job runs once more, never is it lost.
        # Enqueues stay durable. On this class of disk the flush wait, not the statements, would otherwise
        # bound the drain rate; "on" or "remote_write" trade that rate for no re-run after a failover.
        self.claim_link = Link(dsn, "claim", self.stop, commit=config.commit, claims=True)
        # Outcomes and the control connection (heartbeats, deregistering) are still needed while shutting down;
        # _shut_down bounds how long they keep trying. Claims and LISTEN stop at once.
        self.outcome_link = Link(dsn, "outcomes", self.stop, commit=config.commit, needed_in_shutdown=True)
        self.control_link = Link(dsn, "control", self.stop, needed_in_shutdown=True)
        # LISTEN goes to its own URL when given one; that URL is a whole session by definition, so no pooler is
        # looked for there (README, "Behind a connection pooler").
        if config.listen_dsn:
            self.listen_link = Link(config.listen_dsn, "listen", self.stop, mode="session")
        else:
            self.listen_link = Link(dsn, "listen", self.stop)
        self.due = DueTimes(config.queues)
        ahead = ClaimAhead(min(config.batch_size, config.concurrency)) if config.claim_ahead else None
        self.outcomes = OutcomeBuffer(self.outcome_link, self.id, config, self.due.note, metrics)
        self.executor = Executor(config, self.tasks, self.outcomes, ahead, metrics)
        self.fetcher = Fetcher(
            self.id,
            config,
            self.claim_link,
            self.tasks,
            self.executor,
            self.outcomes,
            self.due,
            self.stop,
            ahead,
            metrics,
        )
        self.listener = Listener(self.listen_link, self.due, self.executor.cancel_job, self.stop, config.poll_interval)
        self.heartbeat = Heartbeat(self.id, config, self.tasks, lambda: len(self.executor.running))
        services: list[Service] = [
            self.heartbeat,
            CancelPoll(self.id, self.executor.held, self.executor.cancel_runs),
            Reaper(config),
            DuePromoter(config.queues, self.due.wake.set),
            ScheduleTicker(),
            ReadyProbe(self.fetcher.marks, self.tasks, self.due.wake.set),
        ]
        if metrics is not None:
            metrics.watch_abandoned_threads(lambda: self.executor.abandoned_threads)
            services.append(MetricsRefresh(metrics, config.queues))
        self.maintenance = Maintenance(self.control_link, services)
        self.failed_tasks: list[str] = []
        self.started_at = time.monotonic()

    # --- life cycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check that the database has this release's migrations, register the worker and record the schedules
        its handlers declare; it may claim after this."""
        control = await self.control_link.get()
        # A worker's queries call functions its release's migrations create: on an older database every claim
        # would fail. Migrate first (docs/design.md, "Upgrades"); a newer database is fine.
        needed = migrate.available()[-1].version
        found = await repository.schema_version(control)
        if found < needed:
            raise DatabaseError(
                f"this database's sched tables are at migration {found:04d} and this release needs {needed:04d}:"
                " run `sched migrate` before starting its workers"
            )
        await self.heartbeat.register(control)
        await declare_schedules(control, self.tasks.values(), self.config.queues[0])

    async def run(self) -> int:
        """Register, work until stopped (or drained with --burst), shut down gracefully, deregister."""
        self._install_signal_handlers()
        # A stop requested before the database could be reached ends the worker at once: nothing is held yet.
        opening = asyncio.create_task(self.open())
        stopped = asyncio.create_task(self.stop.requested.wait())
        await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            await self.close()
            logger.info("worker {} stopped before it could reach the database", self.id[:8])
            return 0
        opening.result()
        config = self.config
        logger.info(
            "worker {} started: queues {}, concurrency {}, {} task(s)",
            self.id[:8],
            ",".join(config.queues),
            config.concurrency,
            len(self.tasks),
        )
        runners = [self._spawn(f"runner-{i}", self.executor.runner()) for i in range(config.concurrency)]
        background = [
            self._spawn("flusher", self.outcomes.run()),
            self._spawn("executor watch", self.executor.watch()),
            self._spawn("maintenance", self.maintenance.run()),
        ]
        if config.listen:
            background.append(self._spawn("listener", self.listener.run()))
        health = None
        if config.health_port is not None:
            from pgsched.worker.health import start_health_server

            health = await start_health_server(self.health, self.metrics, config.health_host, config.health_port)
        fetcher = self._spawn("fetcher", self.fetcher.run())
        stop_wait = asyncio.create_task(self.stop.requested.wait())
        await asyncio.wait({fetcher, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        clean = await self._shut_down(fetcher, runners, background)
        stop_wait.cancel()
        if health is not None:
            health.close()
        await self.close()
        logger.info("worker {} stopped", self.id[:8])
        return 0 if clean and not self.failed_tasks else 1

    async def close(self) -> None:
        """Close the connections and the threads of sync handlers."""
        for link in (self.claim_link, self.outcome_link, self.control_link, self.listen_link):
            await link.close()
        self.executor.close()

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        return asyncio.create_task(self._supervised(name, work), name=f"sched-{name}")

    async def _supervised(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one background task; if it fails, say so loudly and stop the worker (see the module's doc)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc).error("the worker's {} failed unexpectedly; stopping the worker", name)
            self.failed_tasks.append(name)
            self.stop.requested.set()

    async def _shut_down(
        self, fetcher: asyncio.Task, runners: list[asyncio.Task], background: list[asyncio.Task]
    ) -> bool:
        """Stop claiming, let running jobs finish for up to --shutdown-timeout (a second signal skips the wait),
        release the rest without spending an attempt, flush, deregister (docs/protocol.md, "Shutdown")."""
        self.stop.draining = True
        # Whatever the database's state, the connections still needed stop trying by the end of the shutdown
        # timeout (a forced stop ends their tries at once).
        give_up_at = time.monotonic() + self.config.shutdown_timeout
        self.outcome_link.give_up_at = self.control_link.give_up_at = give_up_at
        self.due.wake.set()
        self.executor.slot_freed.set()
        if not fetcher.done():
            await asyncio.wait({fetcher})
        executor = self.executor
        # Claimed but not started: give back at once.
        executor.release_ready()
        await executor.finish_running(self.config.shutdown_timeout, self.stop.forced)
        executor.wake_idle_runners()
        runners = [*runners, *executor.spare_runners]
        for task in runners:
            task.cancel()
        # Bounded: a runner left with an async handler that ignores cancellation never ends (executor.py).
        await asyncio.wait(runners, timeout=1.0)
        flushed = await self._flush_until_given_up(timeout=max(5.0, self.config.stale_after / 2))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        deregistered = False
        try:
            wait_s = 5.0
            if self.control_link.unreachable:
                wait_s = max(1.0, min(wait_s, give_up_at - time.monotonic()))
            control = await asyncio.wait_for(self.control_link.get(), timeout=wait_s)
            await repository.deregister_worker(control, self.id)
            deregistered = True
        except (SchedError, TimeoutError) as exc:
            logger.error("could not deregister: {}", getattr(exc, "message", exc) or type(exc).__name__)
        return flushed and deregistered

    async def _flush_until_given_up(self, timeout: float) -> bool:
        """Flush the outcomes left, for up to ``timeout``, but no longer once the outcome connection has given up
        (the database stayed out of reach past the shutdown timeout): nothing could be written after that."""
        flushing = asyncio.create_task(self.outcomes.flush_all(timeout=timeout))
        gave_up = asyncio.create_task(self.outcome_link.gave_up.wait())
        await asyncio.wait({flushing, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        gave_up.cancel()
        if flushing.done():
            return flushing.result()
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        logger.error("the database is out of reach: outcomes left unwritten; the reaper will requeue those jobs")
        return False

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop.request, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
                return

    # --- health ---------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is healthy, with the facts behind the answer."""
        now = time.monotonic()
        config = self.config
        beat_age = now - self.heartbeat.last_beat
        reasons = []
        if beat_age > config.stale_after / 2:
            reasons.append(f"heartbeat is {beat_age:.1f}s old (stale after {config.stale_after:g}s)")
        if not self.control_link.up:
            reasons.append("the database is unreachable")
        reasons.extend(f"its {name} failed" for name in self.failed_tasks)
        abandoned = self.executor.abandoned_threads
        threads = self.executor.threads
        if threads is not None and abandoned > threads.spares:
            # Past its spares, the pool lends slots' threads to abandoned handlers: sync jobs wait for a thread.
            reasons.append(f"{abandoned} abandoned sync handler(s), more than the {threads.spares} spare threads")
        if self.stop.draining:
            reasons.append("shutting down")
        body = {
            "status": "ok" if not reasons else "unhealthy",
            "reasons": reasons,
            "worker_id": self.id,
            "queues": config.queues,
            "running": len(self.executor.running),
            "concurrency": config.concurrency,
            "abandoned_threads": abandoned,
            "heartbeat_age_s": round(beat_age, 3),
            "uptime_s": round(now - self.started_at, 3),
        }
        return not reasons, body
