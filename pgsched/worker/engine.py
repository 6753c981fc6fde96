"""The worker engine: an asyncio loop made of small parts that share one state object.

- the fetcher claims as many jobs as there are free slots, one round trip per queue, plus the few jobs that
  short handlers will want within the next round trips (ClaimAhead);
- runners (one task per slot) execute jobs: async handlers on the loop, sync handlers in a thread pool;
- the outcome buffer is flushed in batches by the flusher, on its own connection, while claims go on;
- the supervisor enforces timeouts, cancellation requests and the progress rate limit;
- the control loop beats, reaps (one reaper across all workers), and ticks schedules;
- the listener wakes the fetcher on NOTIFY and learns when scheduled jobs fall due.

Only the repository talks SQL; this module decides when to call it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import math
import os
import random
import signal
import socket
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection, connect_async
from pgsched.errors import DatabaseUnavailable, SchedError
from pgsched.models import ClaimedJob, Outcome, OutcomeKind
from pgsched.worker.context import Fail, JobContext, Retry
from pgsched.worker.registry import Registry, TaskSpec


@dataclass
class WorkerConfig:
    """How a worker runs; the CLI fills it from flags and settings."""

    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 10
    batch_size: int = 500
    poll_interval: float = 1.0
    stale_after: float = 30.0
    reap_interval: float = 5.0
    shutdown_timeout: float = 30.0
    timeout_grace: float = 10.0
    listen: bool = True
    burst: bool = False
    flush_interval: float = 0.002
    flush_size: int = 500
    progress_interval: float = 1.0
    claim_ahead: bool = True
    log_jobs: bool = False
    health_host: str = "127.0.0.1"
    health_port: int | None = None

    @property
    def heartbeat_interval(self) -> float:
        # Several beats fit in one stale-after window, so one slow beat never makes a worker look dead.
        return max(0.2, min(5.0, self.stale_after / 4))


class ClaimAhead:
    """How many jobs to claim beyond the free slots: as many as are expected to start within a few claim
    round trips, judged by the rate at which this worker finishes jobs.

    A slot that frees up with nothing claimed waits a whole claim round trip (1-2 ms under load) before its
    next job starts: for 20 ms handlers that is a tenth of the worker's capacity. A few jobs claimed ahead start
    the moment a slot frees, while the next claim runs. The rate makes it safe for long jobs: a worker that
    finishes a job a second holds nothing ahead (0.004 of a job is rounded down), so it never sits on work
    that an idle worker elsewhere could run. A job that still waits after ``HOLD_LIMIT_S`` is given back."""

    LOOKAHEAD_ROUND_TRIPS = 4
    RATE_TIME_CONSTANT_S = 0.5
    HOLD_LIMIT_S = 0.5

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.finished = 0
        self.rate = 0.0  # jobs finished per second, smoothed
        self.round_trip_s = 0.0  # one claim, smoothed
        self._counted = 0
        self._counted_at: float | None = None

    def claim_took(self, seconds: float) -> None:
        self.round_trip_s += 0.2 * (seconds - self.round_trip_s)

    def extra(self, now: float) -> int:
        """Jobs to hold beyond the free slots right now."""
        if self._counted_at is None:
            self._counted_at = now
        elapsed = now - self._counted_at
        if elapsed >= 0.02:
            recent = (self.finished - self._counted) / elapsed
            # An average over time, not over calls: a long quiet spell outweighs any number of busy moments.
            self.rate += (1 - math.exp(-elapsed / self.RATE_TIME_CONSTANT_S)) * (recent - self.rate)
            self._counted, self._counted_at = self.finished, now
        return min(self.limit, int(self.rate * self.LOOKAHEAD_ROUND_TRIPS * self.round_trip_s))


class _Running:
    """A job a runner is executing right now."""

    __slots__ = ("ctx", "deadline", "job", "runner", "spec", "started", "stop_reason")

    def __init__(self, job: ClaimedJob, spec: TaskSpec, ctx: JobContext, runner: asyncio.Task, timeout_s: float):
        self.job = job
        self.spec = spec
        self.ctx = ctx
        self.runner = runner
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.stop_reason: str | None = None


class _Link:
    """One database connection of the worker, reconnected with jittered exponential backoff when lost."""

    def __init__(self, worker: Worker, dsn: str, role: str, *, flush_wait: bool = True) -> None:
        self._worker = worker
        self._dsn = dsn
        self.role = role
        self._flush_wait = flush_wait
        self.conn: AsyncConnection | None = None
        self.last_ok = 0.0

    async def get(self) -> AsyncConnection:
        if self.conn is not None and not self.conn.broken:
            return self.conn
        delay = 0.1
        failures = 0
        while True:
            try:
                self.conn = await connect_async(self._dsn, application_name=f"sched-worker-{self.role}")
                if not self._flush_wait:
                    await repository.skip_commit_flush_wait(self.conn)
                if failures:
                    logger.info("database connection ({}) restored after {} attempt(s)", self.role, failures)
                self.last_ok = time.monotonic()
                return self.conn
            except DatabaseUnavailable as exc:
                failures += 1
                if failures == 1:
                    logger.warning("reconnecting ({}) failed: {}; retrying with backoff", self.role, exc.message)
                if self._worker.hard_stop.is_set():
                    raise
                await self._worker.sleep_unless_stopped(delay * random.uniform(0.5, 1.0), hard=True)
                delay = min(delay * 2, 5.0)

    async def lost(self) -> None:
        """Drop a connection that failed; the next ``get`` reconnects."""
        conn, self.conn = self.conn, None
        if conn is not None:
            logger.warning("database connection ({}) lost; reconnecting", self.role)
            # Closing a dead socket may fail in many ways; it is gone either way.
            with contextlib.suppress(Exception):
                await conn.close()

    def ok(self) -> None:
        self.last_ok = time.monotonic()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class Worker:
    """One worker process's engine; ``await Worker(...).run()`` returns the exit code."""

    def __init__(self, dsn: str, config: WorkerConfig, registry: Registry, metrics: Any | None = None) -> None:
        self.config = config
        self.registry = registry
        self.tasks = dict(registry.tasks)
        self.task_names = sorted(self.tasks)
        # Most apps declare no limits; then a claimed batch needs no second look.
        self._tasks_with_limits = {
            name for name, spec in self.tasks.items() if spec.max_attempts is not None or spec.timeout_s is not None
        }
        self.id = str(uuid.uuid4())
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.metrics = metrics
        # Claims and outcomes commit without waiting for the WAL to reach disk. Losing the last of them in a
        # server crash can only roll a job back to an earlier state of its life (queued, or running under a
        # worker that the reaper then replaces), which the protocol already handles: at worst a job runs once
        # more, never is it lost. Enqueues stay durable. On this class of disk the flush wait, not the
        # statements, would otherwise bound the drain rate.
        self._claim_link = _Link(self, dsn, "claim", flush_wait=False)
        self._outcome_link = _Link(self, dsn, "outcomes", flush_wait=False)
        self._control_link = _Link(self, dsn, "control")
        self._listen_link = _Link(self, dsn, "listen")
        self._ready: collections.deque[ClaimedJob] = collections.deque()
        self._idle_runners: collections.deque[asyncio.Future] = collections.deque()
        self._running: dict[int, _Running] = {}
        self._in_flight = 0
        self._ahead = ClaimAhead(min(config.batch_size, config.concurrency)) if config.claim_ahead else None
        self._buffer: list[Outcome] = []
        self._progress: dict[int, tuple[int, str]] = {}  # lease -> (job id, latest report)
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: list[float] = []
        self._debug = config.log_jobs
        self._flush_lock = asyncio.Lock()
        self.stop_requested = asyncio.Event()
        self.hard_stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._buffer_ready = asyncio.Event()
        self._buffer_empty = asyncio.Event()
        self._buffer_empty.set()
        self._stopping = False
        self._claim_answer_lost = False
        self._spread_pending = False
        self.last_heartbeat = 0.0
        self.started_at = time.monotonic()

    # --- life cycle ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Register, work until stopped (or drained with --burst), shut down gracefully, deregister."""
        self._loop = asyncio.get_running_loop()
        if any(not spec.is_async for spec in self.tasks.values()):
            self._pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="sched-job")
        self._install_signal_handlers()
        control = await self._control_link.get()
        await self._register(control)
        self.last_heartbeat = time.monotonic()
        await self._declare_schedules(control)
        logger.info(
            "worker {} started: queues {}, concurrency {}, {} task(s)",
            self.id[:8],
            ",".join(self.config.queues),
            self.config.concurrency,
            len(self.task_names),
        )
        runners = [
            asyncio.create_task(self._runner(), name=f"sched-runner-{i}") for i in range(self.config.concurrency)
        ]
        background = [
            asyncio.create_task(self._flusher(), name="sched-flusher"),
            asyncio.create_task(self._supervise(), name="sched-supervisor"),
            asyncio.create_task(self._control(), name="sched-control"),
        ]
        if self.config.listen:
            background.append(asyncio.create_task(self._listener(), name="sched-listener"))
        health = None
        if self.config.health_port is not None:
            from pgsched.worker.health import start_health_server

            health = await start_health_server(self, self.config.health_host, self.config.health_port)
        fetcher = asyncio.create_task(self._fetcher(), name="sched-fetcher")
        stop_wait = asyncio.create_task(self.stop_requested.wait())
        await asyncio.wait({fetcher, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        clean = await self._shut_down(fetcher, runners, background)
        stop_wait.cancel()
        if health is not None:
            health.close()
        for link in (self._claim_link, self._outcome_link, self._control_link, self._listen_link):
            await link.close()
        logger.info("worker {} stopped", self.id[:8])
        return 0 if clean else 1

    async def _shut_down(
        self, fetcher: asyncio.Task, runners: list[asyncio.Task], background: list[asyncio.Task]
    ) -> bool:
        """DESIGN §6: stop claiming, let running jobs finish for up to --shutdown-timeout (a second signal
        skips the wait), release the rest without spending an attempt, flush, deregister."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        if not fetcher.done():
            await asyncio.wait({fetcher})
        if fetcher.done() and not fetcher.cancelled() and fetcher.exception() is not None:
            logger.opt(exception=fetcher.exception()).error("fetcher failed")
        # Claimed but not started: give back at once.
        while self._ready:
            job = self._ready.popleft()
            self._in_flight -= 1
            self._record(Outcome(job.id, job.lease, OutcomeKind.RELEASED))
        if self._running:
            logger.info(
                "waiting up to {:.0f}s for {} running job(s) to finish",
                self.config.shutdown_timeout,
                len(self._running),
            )
            deadline = time.monotonic() + self.config.shutdown_timeout
            while self._running and time.monotonic() < deadline and not self.hard_stop.is_set():
                self._slot_freed.clear()
                await _wait_any(self._slot_freed, self.hard_stop, timeout=deadline - time.monotonic())
        if self._running:
            logger.warning("releasing {} job(s) still running", len(self._running))
            for running in list(self._running.values()):
                self._stop_job(running, "shutdown")
            while self._running:
                self._slot_freed.clear()
                await _wait_any(self._slot_freed, timeout=0.1)
        for waiter in self._idle_runners:
            if not waiter.done():
                waiter.set_result(None)
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        flushed = await self._flush_all(timeout=max(5.0, self.config.stale_after / 2))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        deregistered = False
        try:
            control = await asyncio.wait_for(self._control_link.get(), timeout=5.0)
            await repository.deregister_worker(control, self.id)
            deregistered = True
        except (SchedError, TimeoutError) as exc:
            logger.error("could not deregister: {}", getattr(exc, "message", exc) or type(exc).__name__)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return flushed and deregistered

    async def _register(self, conn: AsyncConnection) -> None:
        config = self.config
        await repository.register_worker(
            conn,
            self.id,
            self.host,
            self.pid,
            config.queues,
            self.task_names,
            config.concurrency,
            stale_after_s=config.stale_after,
            timeout_grace_s=config.timeout_grace,
        )

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
                return

    def request_stop(self, sig: int | None = None) -> None:
        """First call: graceful stop. Second call: skip waiting for running jobs."""
        if self.stop_requested.is_set():
            logger.warning("second signal: releasing running jobs now")
            self.hard_stop.set()
            return
        if sig is not None:
            logger.info("received {}, shutting down gracefully", signal.Signals(sig).name)
        self.stop_requested.set()

    async def sleep_unless_stopped(self, seconds: float, *, hard: bool = False) -> None:
        """Sleep, waking early when a stop (or, with ``hard``, a forced stop) is requested."""
        await _wait_any(self.hard_stop if hard else self.stop_requested, timeout=seconds)

    # --- fetching -----------------------------------------------------------------------------------------

    async def _fetcher(self) -> None:
        config = self.config
        confirm_drained = False
        ahead = self._ahead
        while not self._stopping:
            extra = ahead.extra(time.monotonic()) if ahead is not None else 0
            free = config.concurrency + extra - self._in_flight
            # With jobs waiting here already, top up once half the margin is spent rather than for every slot.
            if free <= 0 or (self._ready and free < (extra + 1) // 2):
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            # Cleared before the claim, so a NOTIFY that lands while the claim runs is not lost.
            self._wake.clear()
            try:
                if self._claim_answer_lost:
                    await self._release_unknown_running()
                claimed = await self._claim(free)
            except DatabaseUnavailable:
                # The claim may have committed with its answer lost on the way back.
                self._claim_answer_lost = True
                await self._claim_link.lost()
                continue
            except SchedError as exc:
                logger.error("claim failed: {}", exc.message)
                # A claim can commit and what follows it fail (a statement timeout on writing a task's limits):
                # look for jobs held but never received before claiming again, as after a lost answer.
                self._claim_answer_lost = True
                await self.sleep_unless_stopped(config.poll_interval)
                continue
            if claimed:
                confirm_drained = False
                continue
            if config.burst and self._in_flight == 0:
                # Outcomes not yet written may release dependents: flush, then look once more.
                await self._flush_all(timeout=None)
                if confirm_drained and await self._held_by_rate_limit():
                    # Ready jobs wait only for tokens of a rate limit: this worker is not done until they ran.
                    await self._wait_for_work()
                    continue
                if confirm_drained:
                    logger.info("burst: nothing ready and nothing running; exiting")
                    self.stop_requested.set()
                    return
                confirm_drained = True
                continue
            await self._wait_for_work()

    async def _claim(self, free: int) -> int:
        started = time.monotonic()
        conn = await self._claim_link.get()
        claimed = 0
        for queue in self.config.queues:
            jobs = await repository.claim_jobs(
                conn, self.id, queue, self.task_names, min(free - claimed, self.config.batch_size)
            )
            if jobs:
                if self._tasks_with_limits:
                    await self._apply_task_limits(conn, jobs)
                self._dispatch(jobs)
                claimed += len(jobs)
                if claimed >= free:
                    break
        self._claim_link.ok()
        if self._ahead is not None:
            self._ahead.claim_took(time.monotonic() - started)
        return claimed

    async def _release_unknown_running(self) -> None:
        """Give back jobs the database holds as running for this worker that it never received. Runs in the
        fetcher, the only claimer, so no claim of ours is in flight meanwhile."""
        conn = await self._claim_link.get()
        known = self._running.keys() | {job.id for job in self._ready}
        lost = [
            (job_id, lease)
            for job_id, lease in await repository.running_for_worker(conn, self.id)
            if job_id not in known
        ]
        self._claim_answer_lost = False
        if lost:
            logger.warning("giving back {} job(s) claimed by a query whose answer was lost", len(lost))
            for job_id, lease in lost:
                self._record(Outcome(job_id, lease, OutcomeKind.RELEASED))

    async def _apply_task_limits(self, conn: AsyncConnection, jobs: list[ClaimedJob]) -> None:
        # A task's declared max_attempts/timeout win over the job's; write them so the reaper agrees.
        changes = []
        for job in jobs:
            spec = self.tasks[job.task]
            max_attempts = spec.max_attempts if spec.max_attempts is not None else job.max_attempts
            timeout_s = spec.timeout_s if spec.timeout_s is not None else job.timeout_s
            if max_attempts != job.max_attempts or timeout_s != job.timeout_s:
                job.max_attempts, job.timeout_s = max_attempts, timeout_s
                changes.append(job)
        if changes:
            await repository.apply_task_limits(conn, self.id, changes)

    def _dispatch(self, jobs: list[ClaimedJob]) -> None:
        now = time.monotonic()
        for job in jobs:
            job.claimed_at = now
        self._ready.extend(jobs)
        self._in_flight += len(jobs)
        if self.metrics is not None:
            self.metrics.claimed(jobs)
        self._wake_runner()

    def _wake_runner(self) -> None:
        idle = self._idle_runners
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _spread(self) -> None:
        # Runs once the busy runner yields: if jobs are still waiting, one more runner joins in. A handler
        # that never suspends (a no-op) lets one runner take the whole batch with no wake-ups at all.
        self._spread_pending = False
        if self._ready:
            self._wake_runner()

    async def _wait_for_work(self) -> None:
        """Sleep until a NOTIFY, a freed slot's worth of news, the next known due time, or the poll interval."""
        timeout = self.config.poll_interval
        due = self._due
        now = time.monotonic()
        while due and due[0] <= now:
            heapq.heappop(due)
        if due:
            timeout = min(timeout, due[0] - now)
        if self.config.burst and self._in_flight:
            # A burst worker re-checks as soon as its last job ends, not a poll interval later.
            self._slot_freed.clear()
            await _wait_any(self._wake, self._slot_freed, timeout=timeout)
            return
        await _wait_any(self._wake, timeout=timeout)

    # --- running ------------------------------------------------------------------------------------------

    async def _runner(self) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        ready = self._ready
        while True:
            if not ready:
                waiter = loop.create_future()
                self._idle_runners.append(waiter)
                await waiter
                continue
            job = ready.popleft()
            if ready and not self._spread_pending:
                self._spread_pending = True
                loop.call_soon(self._spread)
            await self._execute(job, me)

    async def _execute(self, job: ClaimedJob, me: asyncio.Task) -> None:
        spec = self.tasks[job.task]
        ctx = JobContext(
            job.id,
            job.attempt,
            job.max_attempts,
            job.queue,
            job.task,
            lambda _ctx, text: self._report_progress(job, text),
        )
        running = _Running(job, spec, ctx, me, job.timeout_s)
        self._running[job.id] = running
        if self.metrics is not None:
            self.metrics.started()
        if self._debug:
            logger.bind(job_id=job.id).debug("job {} {} started (attempt {})", job.id, job.task, job.attempt)
        outcome: Outcome
        try:
            if spec.is_async:
                result = await spec.fn(job.payload, ctx)
            else:
                assert self._pool is not None
                result = await asyncio.get_running_loop().run_in_executor(self._pool, spec.fn, job.payload, ctx)
        except asyncio.CancelledError:
            if running.stop_reason is None:
                raise
            me.uncancel()
            outcome = self._stopped_outcome(running)
        except Exception as exc:
            outcome = self._failure(running, exc)
        else:
            if running.stop_reason == "cancel":
                outcome = Outcome(job.id, job.lease, OutcomeKind.CANCELLED, error="cancelled on request")
            elif running.stop_reason is not None:
                outcome = self._stopped_outcome(running)
            else:
                outcome = self._success(running, result)
        finally:
            del self._running[job.id]
            self._progress.pop(job.lease, None)
            self._in_flight -= 1
            if self._ahead is not None:
                self._ahead.finished += 1
            self._slot_freed.set()
        if self.metrics is not None:
            self.metrics.finished(job, time.monotonic() - running.started)
        self._record(outcome)

    def _success(self, running: _Running, result: Any) -> Outcome:
        job = running.job
        if result is None:
            if self._debug:
                logger.bind(job_id=job.id).debug("job {} {} succeeded", job.id, job.task)
            return Outcome(job.id, job.lease, OutcomeKind.SUCCEEDED)
        try:
            text = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            error = f"the handler returned a value that is not JSON ({type(result).__name__}): {exc}"
            logger.bind(job_id=job.id).warning("job {} {} failed: {}", job.id, job.task, error)
            return Outcome(job.id, job.lease, OutcomeKind.FAILED, error=error, retryable=False)
        if self._debug:
            logger.bind(job_id=job.id).debug("job {} {} succeeded", job.id, job.task)
        return Outcome(job.id, job.lease, OutcomeKind.SUCCEEDED, result=text)

    def _failure(self, running: _Running, exc: BaseException) -> Outcome:
        job, spec = running.job, running.spec
        summary = f"{type(exc).__name__}: {exc}"
        # A handler that raised Fail or Retry decided: its message is the whole story, no traceback needed.
        if isinstance(exc, Fail):
            verdict, error = " (no retry)", summary
        elif isinstance(exc, Retry):
            verdict, error = f" (retry asked in {exc.after_s:g}s)", summary
        else:
            verdict, error = "", summary + "\n" + "".join(traceback.format_exception(exc)[-6:])
        logger.bind(job_id=job.id).warning(
            "job {} {} failed on attempt {}/{}{}: {}", job.id, job.task, job.attempt, job.max_attempts, verdict, summary
        )
        return Outcome(
            job.id,
            job.lease,
            OutcomeKind.FAILED,
            error=error[:4000],
            retryable=not isinstance(exc, Fail),
            backoff_base_s=spec.backoff_base_s,
            backoff_cap_s=spec.backoff_cap_s,
            retry_after_s=exc.after_s if isinstance(exc, Retry) else None,
        )

    def _stopped_outcome(self, running: _Running) -> Outcome:
        job, reason = running.job, running.stop_reason
        if reason == "shutdown":
            return Outcome(job.id, job.lease, OutcomeKind.RELEASED)
        if reason == "cancel":
            logger.bind(job_id=job.id).info("job {} {} cancelled on request", job.id, job.task)
            return Outcome(job.id, job.lease, OutcomeKind.CANCELLED, error="cancelled on request")
        error = f"timed out after {job.timeout_s:g}s"
        logger.bind(job_id=job.id).warning("job {} {} {}", job.id, job.task, error)
        return Outcome(
            job.id,
            job.lease,
            OutcomeKind.FAILED,
            error=error,
            backoff_base_s=running.spec.backoff_base_s,
            backoff_cap_s=running.spec.backoff_cap_s,
        )

    def _stop_job(self, running: _Running, reason: str) -> None:
        """Stop one running job: async handlers are cancelled; a sync handler sees ``ctx.cancelled`` and,
        unless only a cancellation was requested, its runner stops waiting for the thread."""
        if running.stop_reason is not None:
            return
        running.stop_reason = reason
        running.ctx.cancelled = True
        if running.spec.is_async or reason != "cancel":
            running.runner.cancel()

    def _report_progress(self, job: ClaimedJob, text: str) -> None:
        # Called from handlers, possibly in a pool thread: hop onto the loop before touching state. Keyed by the
        # run's lease, so a run abandoned after a timeout can never report for a newer run of the same job.
        loop = self._loop
        assert loop is not None
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is loop:
            self._progress[job.lease] = (job.id, text)
        else:
            loop.call_soon_threadsafe(self._progress.__setitem__, job.lease, (job.id, text))

    # --- outcomes -----------------------------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        self._buffer_empty.clear()
        self._buffer_ready.set()

    async def _flusher(self) -> None:
        config = self.config
        while True:
            if not self._buffer:
                self._buffer_ready.clear()
                await self._buffer_ready.wait()
            if len(self._buffer) < config.flush_size:
                # Let a few milliseconds of outcomes gather into one statement.
                await asyncio.sleep(config.flush_interval)
            await self._flush_once()

    async def _flush_once(self) -> bool:
        """Write the buffered outcomes; on failure keep them for the next try. True when written."""
        # One transaction at a time on the outcome connection: the flusher, a burst drain and shutdown share it.
        async with self._flush_lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if not self._buffer:
            self._buffer_empty.set()
            return True
        # At most flush_size per statement: a bounded statement is planned and run in a bounded time, and the
        # flusher comes straight back for the rest.
        size = self.config.flush_size
        batch, self._buffer = self._buffer[:size], self._buffer[size:]
        started = time.perf_counter()
        try:
            conn = await self._outcome_link.get()
            result = await repository.record_outcomes(conn, self.id, batch)
        except DatabaseUnavailable:
            self._buffer[:0] = batch
            await self._outcome_link.lost()
            return False
        except SchedError as exc:
            self._buffer[:0] = batch
            logger.error("writing {} outcome(s) failed: {}; will retry", len(batch), exc.message)
            await asyncio.sleep(0.5)
            return False
        self._outcome_link.ok()
        if result.fenced:
            logger.warning(
                "{} late outcome(s) fenced off (jobs {}): another attempt owns them now",
                len(result.fenced),
                ", ".join(str(i) for i in result.fenced[:10]),
            )
        if result.retry_due:
            queues = set(self.config.queues)
            for queue, epoch in result.retry_due:
                self._note_due(queue, epoch, queues)
        if self.metrics is not None:
            self.metrics.flushed(batch, result, time.perf_counter() - started)
        if not self._buffer:
            self._buffer_empty.set()
        return True

    async def _flush_all(self, timeout: float | None) -> bool:
        """Flush until the buffer is empty, giving up after ``timeout`` seconds (None: keep trying)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            async with self._flush_lock:  # also waits out a flush in progress, which may hand its batch back
                if not self._buffer:
                    return True
            if deadline is not None and time.monotonic() > deadline:
                logger.error(
                    "{} outcome(s) could not be written; the reaper will requeue those jobs", len(self._buffer)
                )
                return False
            if not await self._flush_once():
                await asyncio.sleep(0.2)

    # --- supervision: timeouts, cancellation, progress ------------------------------------------------------

    async def _supervise(self) -> None:
        last_progress = 0.0
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for running in list(self._running.values()):
                if running.stop_reason is None and now > running.deadline:
                    self._stop_job(running, "timeout")
            if self._ready:
                self._give_back_held(now)
            if self._progress and now - last_progress >= self.config.progress_interval:
                last_progress = now
                await self._write_progress()

    def _give_back_held(self, now: float) -> None:
        """Release jobs claimed ahead that found no slot in time (the slots filled with long jobs meanwhile),
        without spending an attempt, so another worker can run them."""
        ready = self._ready
        released = 0
        while ready and now - ready[0].claimed_at > ClaimAhead.HOLD_LIMIT_S:
            job = ready.popleft()
            self._in_flight -= 1
            self._record(Outcome(job.id, job.lease, OutcomeKind.RELEASED))
            released += 1
        if released:
            logger.info("gave back {} job(s) claimed ahead that found no free slot in time", released)

    async def _write_progress(self) -> None:
        pending, self._progress = self._progress, {}
        async with self._flush_lock:
            try:
                conn = await self._outcome_link.get()
                for lease, (job_id, text) in pending.items():
                    if not await repository.set_progress(conn, self.id, job_id, lease, text):
                        logger.bind(job_id=job_id).warning("progress of job {} fenced off", job_id)
            except DatabaseUnavailable:
                await self._outcome_link.lost()
            except SchedError as exc:
                # A statement or lock timeout, say. Progress is a hint that the next report replaces; what must
                # not happen is this error ending the supervisor, and with it the enforcement of timeouts.
                logger.error("writing progress failed: {}", exc.message)

    # --- control: heartbeat, cancellation poll, reaper ----------------------------------------------------

    async def _control(self) -> None:
        config = self.config
        next_beat = next_reap = next_cancel_poll = next_schedule_tick = 0.0
        while True:
            now = time.monotonic()
            try:
                conn = await self._control_link.get()
                if now >= next_beat:
                    next_beat = now + config.heartbeat_interval
                    if not await repository.heartbeat_worker(conn, self.id, len(self._running)):
                        logger.warning("worker row was reaped; registering again")
                        await self._register(conn)
                    self.last_heartbeat = time.monotonic()
                if self._running and now >= next_cancel_poll:
                    next_cancel_poll = now + 1.0
                    leases = await repository.cancel_requested(conn, self.id)
                    for running in list(self._running.values()):
                        if running.job.lease in leases:
                            self._stop_job(running, "cancel")
                if now >= next_reap:
                    next_reap = now + config.reap_interval * random.uniform(0.8, 1.2)
                    await self._reap(conn)
                if now >= next_schedule_tick:
                    next_schedule_tick = now + 1.0
                    await self._tick_schedules(conn)
                if self.metrics is not None:
                    await self.metrics.refresh(conn, config.queues)
                self._control_link.ok()
            except DatabaseUnavailable:
                await self._control_link.lost()
                continue
            except SchedError as exc:
                logger.error("maintenance failed: {}", exc.message)
            await asyncio.sleep(0.25)

    async def _reap(self, conn: AsyncConnection) -> None:
        result = await repository.reap_stale(conn)
        if result.requeued or result.failed or result.workers_removed:
            logger.warning(
                "reaper: requeued {} job(s), failed {}, removed {} dead worker(s)",
                len(result.requeued),
                len(result.failed),
                result.workers_removed,
            )

    # --- schedules ----------------------------------------------------------------------------------------

    async def _declare_schedules(self, conn: AsyncConnection) -> None:
        """Record the schedules handlers declare with ``@task(..., cron=...)``, on their ``cron_queue`` or else
        this worker's first queue."""
        from pgsched.schedules import build_schedule

        specs = [
            build_schedule(spec.name, spec.cron, spec.name, queue=spec.cron_queue or self.config.queues[0])
            for spec in self.tasks.values()
            if spec.cron
        ]
        for name in await repository.upsert_code_schedules(conn, specs):
            logger.info("schedule {} declared in code recorded", name)

    async def _tick_schedules(self, conn: AsyncConnection) -> None:
        await repository.promote_due(conn)
        enqueued = await repository.tick_schedules(conn)
        if enqueued:
            logger.info("schedules: enqueued {} job(s)", enqueued)

    async def _held_by_rate_limit(self) -> bool:
        """Whether ready jobs wait only for a rate limit's tokens; on a database error, assume they do (the
        burst worker looks again rather than exiting early)."""
        try:
            conn = await self._claim_link.get()
            return await repository.rate_limited_backlog(conn, self.config.queues, self.task_names)
        except DatabaseUnavailable:
            await self._claim_link.lost()
            return True
        except SchedError as exc:
            logger.error("checking rate limits failed: {}", exc.message)
            return True

    def _cancel(self, job_id: int) -> None:
        running = self._running.get(job_id)
        if running is not None:
            self._stop_job(running, "cancel")

    # --- wake-ups -----------------------------------------------------------------------------------------

    async def _listener(self) -> None:
        queues = set(self.config.queues)
        while True:
            try:
                conn = await self._listen_link.get()
                await conn.listen([repository.WAKEUP_CHANNEL, repository.CANCEL_CHANNEL])
                # Anything enqueued while we were not listening is found by this poll.
                self._wake.set()
                while True:
                    for channel, payload in await conn.notifications(timeout=5.0):
                        if channel == repository.CANCEL_CHANNEL:
                            if payload.isdigit():
                                self._cancel(int(payload))
                            continue
                        self._on_wakeup(payload, queues)
                    self._listen_link.ok()
            except DatabaseUnavailable:
                await self._listen_link.lost()
            except SchedError as exc:
                # Polling covers the gap; listen again on a fresh connection after a pause.
                logger.error("listening for wake-ups failed: {}; polling meanwhile", exc.message)
                await self._listen_link.lost()
                await self.sleep_unless_stopped(self.config.poll_interval)

    def _on_wakeup(self, payload: str, queues: set[str]) -> None:
        # "queue" for a job due now, "queue epoch" for one due at that time; no epoch (or a bad one) means now.
        queue, _, epoch = payload.partition(" ")
        try:
            when = float(epoch)
        except ValueError:
            when = 0.0
        self._note_due(queue, when, queues)

    def _note_due(self, queue: str, epoch: float, queues: set[str]) -> None:
        """Wake the fetcher now for a job due now, or remember when a later one falls due."""
        if queue not in queues:
            return
        due_in = epoch - time.time()
        if due_in <= 0.001:
            self._wake.set()
            return
        due = time.monotonic() + due_in
        if len(self._due) < 10_000:
            earliest = self._due[0] if self._due else None
            heapq.heappush(self._due, due)
            if earliest is None or due < earliest:
                self._wake.set()  # the fetcher recomputes how long to sleep

    # --- health -------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is healthy, with the facts behind the answer."""
        now = time.monotonic()
        beat_age = now - self.last_heartbeat
        reasons = []
        if beat_age > self.config.stale_after / 2:
            reasons.append(f"heartbeat is {beat_age:.1f}s old (stale after {self.config.stale_after:g}s)")
        if self._control_link.conn is None or self._control_link.conn.broken:
            reasons.append("the database is unreachable")
        if self._stopping:
            reasons.append("shutting down")
        body = {
            "status": "ok" if not reasons else "unhealthy",
            "reasons": reasons,
            "worker_id": self.id,
            "queues": self.config.queues,
            "running": len(self._running),
            "concurrency": self.config.concurrency,
            "heartbeat_age_s": round(beat_age, 3),
            "uptime_s": round(now - self.started_at, 3),
        }
        return not reasons, body


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until any event is set or the timeout passes."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
