"""The executor: runners (one task per slot) run claimed jobs, async handlers on the loop and sync handlers
in threads; it enforces timeouts, cancellation requests and the progress rate limit, and hands each run's
end to the outcome rules (outcomes.py).

Runs are keyed by the lease of their claim, not by job id: the same worker can hold two runs of one job
(an old run it was reaped from, still going, and a new claim of the same job), and each must end on its own
(docs/protocol.md, "Leases and fencing")."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loguru import logger

from pgsched import tracing
from pgsched.models import ClaimedJob, Outcome, OutcomeKind
from pgsched.worker.config import WorkerConfig
from pgsched.worker.context import JobContext
from pgsched.worker.fetcher import ClaimAhead
from pgsched.worker.outcomes import (
    OutcomeBuffer,
    RunEnd,
    StopReason,
    cancelled_before_start,
    log_outcome,
    outcome_of,
    released,
)
from pgsched.worker.registry import Handler, TaskSpec
from pgsched.worker.stopping import wait_any


class Run:
    """A job a runner is executing right now."""

    __slots__ = (
        "abandoned",
        "cancel_requested",
        "ctx",
        "given_up",
        "job",
        "left_behind",
        "runner",
        "span",
        "spec",
        "started",
        "stopped",
        "stopped_at",
    )

    def __init__(self, job: ClaimedJob, spec: TaskSpec, ctx: JobContext, runner: asyncio.Task) -> None:
        self.job = job
        self.spec = spec
        self.ctx = ctx
        self.runner = runner
        # When the handler started (a sync one: in its thread); its timeout counts from here. None: not yet.
        self.started: float | None = None
        self.cancel_requested = False
        self.stopped: StopReason | None = None  # why the runner stopped waiting for the handler
        self.stopped_at = 0.0
        self.left_behind = False  # an async handler that did not stop when cancelled, no longer waited for
        self.given_up = False  # a sync run the runner no longer waits for (guarded by the threads' lock)
        self.abandoned = False  # ...and whose handler was still running then
        self.span: Any = None  # the run's trace span, when the worker traces (README, "Tracing")


class SyncThreads:
    """The threads of sync handlers: one per slot, plus a spare for each handler abandoned at its timeout or
    at shutdown (a thread cannot be killed), up to one spare per slot. So an abandoned handler never takes a
    slot's thread; past the spares, new sync jobs wait for a thread, and their timeout starts only when they
    get one (docs/protocol.md, "Timeouts")."""

    def __init__(self, concurrency: int) -> None:
        self.spares = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency + self.spares, thread_name_prefix="sched-job")
        self._lock = threading.Lock()
        self.abandoned = 0

    async def call(self, run: Run, fn: Handler, payload: dict[str, Any], ctx: JobContext, traced: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        if traced:  # the thread runs in the runner's context, where the run's span is current
            return await loop.run_in_executor(
                self._pool, contextvars.copy_context().run, self._in_thread, run, fn, payload, ctx
            )
        return await loop.run_in_executor(self._pool, self._in_thread, run, fn, payload, ctx)

    def _in_thread(self, run: Run, fn: Handler, payload: dict[str, Any], ctx: JobContext) -> Any:
        with self._lock:
            # Stopped, or its cancel requested, while it waited for a thread: never start it (it ends cancelled).
            if run.given_up or run.cancel_requested:
                return None
            run.started = time.monotonic()
        try:
            return fn(payload, ctx)
        finally:
            with self._lock:
                if run.abandoned:
                    self.abandoned -= 1
                run.given_up = True

    def give_up(self, run: Run) -> None:
        """The runner stops waiting for this run's thread (on the loop, before cancelling the runner)."""
        with self._lock:
            if run.given_up:
                return
            run.given_up = True
            if run.started is not None:
                run.abandoned = True
                self.abandoned += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Executor:
    """The slots: jobs claimed and waiting for a runner (``ready``), runs in progress (``running``), and the
    count of both (``in_flight``) that the fetcher fills up to the concurrency."""

    # How long an async handler may take to unwind after its cancellation (timeout, shutdown, cancel request)
    # before the worker stops waiting for it: one that swallows the cancellation, or whose cleanup hangs, must
    # not hold its slot, its job's outcome or the worker's shutdown (docs/protocol.md, "Timeouts").
    ABANDON_AFTER_S = 1.0

    def __init__(
        self,
        config: WorkerConfig,
        tasks: dict[str, TaskSpec],
        outcomes: OutcomeBuffer,
        ahead: ClaimAhead | None = None,
        metrics: Any | None = None,
    ) -> None:
        self._config = config
        self._tasks = tasks
        self._outcomes = outcomes
        self._ahead = ahead
        self._metrics = metrics
        # None where opentelemetry is not installed: then a run costs one test of it (README, "Tracing").
        self._tracing = tracing.run_tracing()
        self._debug = config.log_jobs
        self._max_result_bytes = config.max_payload_bytes
        self.ready: collections.deque[ClaimedJob] = collections.deque()
        self.running: dict[int, Run] = {}  # by lease
        self.in_flight = 0
        self.slot_freed = asyncio.Event()
        self._idle_runners: collections.deque[asyncio.Future] = collections.deque()
        self._spread_pending = False
        self._progress: dict[int, tuple[int, int, str]] = {}  # lease -> (job id, lease, latest report)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.threads = SyncThreads(config.concurrency) if any(not s.is_async for s in tasks.values()) else None
        self.abandoned_tasks = 0  # async handlers left behind, still running
        self._runners: set[asyncio.Task] = set()  # the slots' runners
        self.spare_runners: set[asyncio.Task] = set()  # runners started in place of one left with its handler

    @property
    def abandoned_threads(self) -> int:
        """Sync handlers still running in threads the worker no longer waits for."""
        return self.threads.abandoned if self.threads is not None else 0

    def held(self) -> set[int]:
        """The leases of the runs this worker knows of: claimed and waiting, or running."""
        return self.running.keys() | {job.lease for job in self.ready}

    # --- handing out jobs ----------------------------------------------------------------------------------

    def dispatch(self, jobs: list[ClaimedJob]) -> None:
        """Take claimed jobs; idle runners pick them up."""
        now = time.monotonic()
        running = self.running
        ready_leases = {job.lease for job in self.ready} if self.ready else ()
        for job in jobs:
            job.claimed_at = now
            if job.lease in running or job.lease in ready_leases:
                self._disown(job.lease)
        self.ready.extend(jobs)
        self.in_flight += len(jobs)
        if self._metrics is not None:
            self._metrics.claimed(jobs)
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
        if self.ready:
            self._wake_runner()

    async def runner(self) -> None:
        """One slot: run ready jobs one after another."""
        loop = self._loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        self._runners.add(me)
        ready = self.ready
        while me in self._runners:  # a runner left with a stubborn handler retires once that handler ends
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

    async def run_next(self) -> None:
        """Run the next ready job to its end in a task of its own (for driving a worker step by step)."""
        self._loop = asyncio.get_running_loop()
        job = self.ready.popleft()

        async def alone() -> None:
            me = asyncio.current_task()
            assert me is not None
            await self._execute(job, me)

        await asyncio.create_task(alone())

    # --- running --------------------------------------------------------------------------------------------

    async def _execute(self, job: ClaimedJob, me: asyncio.Task) -> None:
        spec = self._tasks[job.task]
        key = job.lease
        ctx = JobContext(
            job.id, job.attempt, job.max_attempts, job.queue, job.task, lambda _ctx, text: self._report(job, text)
        )
        run = Run(job, spec, ctx, me)
        self.running[key] = run
        if self._metrics is not None:
            self._metrics.started()
        if self._debug:
            logger.bind(job_id=job.id).debug("job {} {} started (attempt {})", job.id, job.task, job.attempt)
        run_tracing = self._tracing
        token = None
        if run_tracing is not None:
            run.span, handler_context = run_tracing.start(job.id, job.task, job.queue, job.attempt, job.trace_context)
            if handler_context is not None:
                token = run_tracing.attach(handler_context)
        began = time.monotonic()
        result: Any = None
        error: BaseException | None = None
        try:
            if spec.is_async:
                run.started = began
                result = await spec.fn(job.payload, ctx)
            else:
                assert self.threads is not None
                result = await self.threads.call(run, spec.fn, job.payload, ctx, token is not None)
        except asyncio.CancelledError:
            if run.stopped is None:
                raise
            me.uncancel()
        except Exception as exc:
            error = exc
        finally:
            if token is not None:
                run_tracing.detach(token)  # type: ignore[union-attr]
            if run.left_behind:
                self.abandoned_tasks -= 1
            else:
                self._free_slot(run)
        if run.left_behind:  # its end was recorded when the worker stopped waiting for it
            return
        self._finish(RunEnd(job, spec, run.cancel_requested, run.stopped, result, error), began, run.span)

    def _free_slot(self, run: Run) -> None:
        key = run.job.lease
        del self.running[key]
        self._progress.pop(key, None)
        self.in_flight -= 1
        if self._ahead is not None:
            self._ahead.finished += 1
        self.slot_freed.set()

    def _finish(self, end: RunEnd, began: float, span: Any = None) -> None:
        job = end.job
        outcome = outcome_of(end, self._max_result_bytes)
        if span is not None:
            self._end_span(span, end, outcome)
        if outcome.kind is not OutcomeKind.SUCCEEDED or self._debug:  # a quiet success logs nothing: skip the call
            log_outcome(end, outcome, debug=self._debug)
        if self._metrics is not None:
            self._metrics.finished(job, time.monotonic() - began)
        self._outcomes.add(outcome)

    def _end_span(self, span: Any, end: RunEnd, outcome: Outcome) -> None:
        # The outcome as the run's span names it: a failure is "retry" when the job will run again, "timeout"
        # when the worker stopped it at its timeout.
        kind = outcome.kind
        if kind is not OutcomeKind.FAILED:
            name = kind.value
        elif end.stopped is StopReason.TIMEOUT:
            name = "timeout"
        elif outcome.retryable and end.job.attempt < end.job.max_attempts:
            name = "retry"
        else:
            name = "failed"
        message = outcome.error.partition("\n")[0] if outcome.error else None
        self._tracing.end(span, name, end.error, message)  # type: ignore[union-attr]

    def _leave_behind_stuck(self, now: float) -> None:
        """Stop waiting for async handlers still running ABANDON_AFTER_S after their cancellation: record their
        run's end as stopped (timed out, released, cancelled) and give their slot a fresh runner."""
        for run in [r for r in self.running.values() if r.stopped is not None and r.spec.is_async]:
            if now < run.stopped_at + self.ABANDON_AFTER_S:
                continue
            run.left_behind = True
            self.abandoned_tasks += 1
            self._free_slot(run)
            job = run.job
            logger.bind(job_id=job.id).warning(
                "job {} {}: its handler did not stop within {:g}s of its cancellation; no longer waiting for it",
                job.id,
                job.task,
                self.ABANDON_AFTER_S,
            )
            self._finish(
                RunEnd(job, run.spec, run.cancel_requested, run.stopped), run.started or run.stopped_at, run.span
            )
            self._replace_runner(run)

    def _replace_runner(self, run: Run) -> None:
        # The run's runner stays with its handler (and retires once that ends); a spare takes its slot.
        if run.runner in self._runners:
            self._runners.discard(run.runner)
            spare = asyncio.get_running_loop().create_task(self.runner(), name="sched-runner-spare")
            self.spare_runners.add(spare)
            spare.add_done_callback(self.spare_runners.discard)

    def _disown(self, lease: int) -> None:
        """A claim handed out a lease this worker still holds: the older claim was lost in a server crash that
        also set the lease sequence back (claims commit asynchronously by default), so the lease now belongs
        to the new claim. The older run is stopped and left behind, and nothing it did is ever written
        (docs/protocol.md, "Leases and fencing")."""
        logger.warning(
            "a claim reissued lease {} that a run of this worker held (a server crash lost that claim)", lease
        )
        self._outcomes.forget(lease)
        for job in [job for job in self.ready if job.lease == lease]:
            self.ready.remove(job)
            self.in_flight -= 1
        run = self.running.get(lease)
        if run is None:
            return
        run.left_behind = True
        self.abandoned_tasks += 1
        self._free_slot(run)
        if run.span is not None:
            self._tracing.end(run.span, "disowned")  # type: ignore[union-attr]
        run.ctx.cancelled = True
        if run.stopped is None:
            run.stopped = StopReason.SHUTDOWN
            run.stopped_at = time.monotonic()
            if self.threads is not None and not run.spec.is_async:
                self.threads.give_up(run)
            run.runner.cancel()
        self._replace_runner(run)

    def stop(self, run: Run, reason: StopReason) -> None:
        """Stop one run. Its handler sees ``ctx.cancelled``. An async handler is cancelled. A sync handler
        asked to cancel may finish by itself (it ends cancelled whatever it does), but its timeout still
        applies; at its timeout or at shutdown its runner stops waiting for the thread."""
        run.ctx.cancelled = True
        if reason is StopReason.CANCEL:
            run.cancel_requested = True
            if not run.spec.is_async:
                return
        if run.stopped is not None:
            return
        run.stopped = reason
        run.stopped_at = time.monotonic()
        if self.threads is not None and not run.spec.is_async:
            self.threads.give_up(run)
        run.runner.cancel()

    def cancel_job(self, job_id: int) -> None:
        """A cancel request for a job: stop every run of it that this worker holds, and drop it from the jobs
        claimed ahead."""
        for run in [r for r in self.running.values() if r.job.id == job_id]:
            self.stop(run, StopReason.CANCEL)
        self._cancel_ready(lambda job: job.id == job_id)

    def cancel_runs(self, leases: Collection[int]) -> None:
        """Cancel requests found by the poll: stop the runs that hold these leases, and drop them from the
        jobs claimed ahead."""
        for lease in leases:
            run = self.running.get(lease)
            if run is not None:
                self.stop(run, StopReason.CANCEL)
        if self.ready and leases:
            self._cancel_ready(lambda job: job.lease in leases)

    def _cancel_ready(self, matches: Callable[[ClaimedJob], bool]) -> None:
        # A job claimed ahead is running in the database but its handler has not started: it must never start
        # now (docs/protocol.md, "Cancel"). It ends cancelled without a run, and its slot is free at once.
        doomed = [job for job in self.ready if matches(job)]
        for job in doomed:
            self.ready.remove(job)
            self.in_flight -= 1
            self._outcomes.add(cancelled_before_start(job))
        if doomed:
            self.slot_freed.set()

    def _report(self, job: ClaimedJob, text: str) -> None:
        # Called from handlers, possibly in a pool thread: hop onto the loop before touching state. Keyed by the
        # run's lease, so a run abandoned after a timeout can never report for a newer run of the same job.
        loop = self._loop
        assert loop is not None
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        entry = (job.id, job.lease, text)
        if running_loop is loop:
            self._progress[job.lease] = entry
        else:
            loop.call_soon_threadsafe(self._progress.__setitem__, job.lease, entry)

    # --- the watch: timeouts, jobs held ahead, progress ----------------------------------------------------

    async def watch(self) -> None:
        """Every 0.1 s: stop runs past their timeout, give back jobs held ahead too long, write progress."""
        last_progress = 0.0
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if await self.watch_once(now, progress_due=now - last_progress >= self._config.progress_interval):
                last_progress = now

    async def watch_once(self, now: float, *, progress_due: bool = True) -> bool:
        """One look; True when it wrote progress."""
        for run in list(self.running.values()):
            if run.stopped is None and run.started is not None and now > run.started + run.job.timeout_s:
                self.stop(run, StopReason.TIMEOUT)
        self._leave_behind_stuck(now)
        if self.ready:
            self._give_back_held(now)
        if not (self._progress and progress_due):
            return False
        pending, self._progress = self._progress, {}
        await self._outcomes.write_progress(list(pending.values()))
        return True

    def _give_back_held(self, now: float) -> None:
        """Release jobs claimed ahead that found no slot in time (the slots filled with long jobs meanwhile),
        without spending an attempt, so another worker can run them."""
        ready = self.ready
        count = 0
        while ready and now - ready[0].claimed_at > ClaimAhead.HOLD_LIMIT_S:
            self.in_flight -= 1
            self._outcomes.add(released(ready.popleft()))
            count += 1
        if count:
            logger.info("gave back {} job(s) claimed ahead that found no free slot in time", count)

    # --- shutdown -------------------------------------------------------------------------------------------

    def release_ready(self) -> None:
        """Give back every job claimed but not started, without spending an attempt."""
        while self.ready:
            self.in_flight -= 1
            self._outcomes.add(released(self.ready.popleft()))

    async def finish_running(self, timeout: float, forced: asyncio.Event) -> None:
        """Let running jobs finish for up to ``timeout`` seconds (a forced stop skips the wait), then stop the
        rest; they are released without spending an attempt."""
        if self.running:
            logger.info("waiting up to {:.0f}s for {} running job(s) to finish", timeout, len(self.running))
            deadline = time.monotonic() + timeout
            while self.running and time.monotonic() < deadline and not forced.is_set():
                self.slot_freed.clear()
                await wait_any(self.slot_freed, forced, timeout=deadline - time.monotonic())
        if self.running:
            logger.warning("releasing {} job(s) still running", len(self.running))
            for run in list(self.running.values()):
                self.stop(run, StopReason.SHUTDOWN)
            while self.running:
                self.slot_freed.clear()
                await wait_any(self.slot_freed, timeout=0.1)
                self._leave_behind_stuck(time.monotonic())

    def wake_idle_runners(self) -> None:
        for waiter in self._idle_runners:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        if self.threads is not None:
            self.threads.close()
