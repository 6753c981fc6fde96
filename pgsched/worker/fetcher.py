"""The fetcher: claims as many jobs as there are free slots, one round trip per queue, plus the few jobs that
short handlers will want within the next round trips (ClaimAhead); it sleeps until a NOTIFY, a freed slot,
the next known due time or the poll interval, and with --burst it notices when everything is drained."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import TYPE_CHECKING

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection
from pgsched.models import ClaimedJob
from pgsched.worker.config import WorkerConfig
from pgsched.worker.link import Link
from pgsched.worker.outcomes import OutcomeBuffer, released_unknown
from pgsched.worker.registry import TaskSpec
from pgsched.worker.stopping import Stop, wait_any

if TYPE_CHECKING:
    from pgsched.worker.executor import Executor
    from pgsched.worker.metrics import WorkerMetrics


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


class DueTimes:
    """When the fetcher should look again: at once after a wake-up, or when a deferred job falls due."""

    MAX_REMEMBERED = 10_000

    def __init__(self, queues: list[str]) -> None:
        self.wake = asyncio.Event()
        self._queues = set(queues)
        self._due: list[float] = []  # monotonic times, a heap
        self._token_at: float | None = None  # monotonic: when a rate limit has its next token

    def on_wakeup(self, payload: str) -> None:
        """A ``sched_wakeup`` NOTIFY: "queue" for a job due now, "queue epoch" for one due at that time; no epoch
        (or a bad one) means now."""
        queue, _, epoch = payload.partition(" ")
        try:
            when = float(epoch)
        except ValueError:
            when = 0.0
        self.note(queue, when)

    def note(self, queue: str, epoch: float) -> None:
        """Wake the fetcher now for a job due now, or remember when a later one falls due."""
        if queue not in self._queues:
            return
        due_in = epoch - time.time()
        if due_in <= 0.001:
            self.wake.set()
            return
        due = time.monotonic() + due_in
        if len(self._due) < self.MAX_REMEMBERED:
            earliest = self._due[0] if self._due else None
            heapq.heappush(self._due, due)
            if earliest is None or due < earliest:
                self.wake.set()  # the fetcher recomputes how long to sleep

    def wait_for_token(self, seconds: float | None) -> None:
        """Look again in ``seconds``, when a rate limit has its next token (None: no token to wait for). Each
        answer replaces the last, so waits that found nothing never pile up."""
        self._token_at = None if seconds is None else time.monotonic() + seconds

    def took_token_wait(self) -> bool:
        """Whether the fetcher's last sleep waited for a token (the token, or the poll that came first, ended it
        unless a wake-up did); forgets it."""
        waited, self._token_at = self._token_at is not None, None
        return waited

    def sleep_for(self, poll_interval: float) -> float:
        """How long the fetcher may sleep: the poll interval, or less when a known job falls due or a token
        comes sooner."""
        due = self._due
        now = time.monotonic()
        while due and due[0] <= now:
            heapq.heappop(due)
        timeout = min(poll_interval, due[0] - now) if due else poll_interval
        if self._token_at is not None:
            timeout = max(0.0, min(timeout, self._token_at - now))
        return timeout


class Fetcher:
    """Claims jobs for the executor's free slots (the only claimer of its worker)."""

    # A worker whose queues have no flow control asks again only this much later (_learn_flow_control): a limit
    # set meanwhile holds at the next claim all the same; only the prompt wake-ups wait for it.
    FLOW_RECHECK_S = 5.0
    # The shortest wait for a token: a bucket about to refill is looked at again no sooner than this. It doubles
    # with each claim in a row that followed a token wait and found nothing, so a worker that wakes for tokens it
    # cannot use (other workers' tasks take them, or the groups whose buckets refill have no job left) backs off
    # instead of waking at the rate ...
    MIN_TOKEN_WAIT_S = 0.001
    # ... and stops doubling here (or at the poll interval, if shorter): a worker that loses the race for tokens
    # to others with jobs of its own still waiting looks again at least this often.
    MAX_TOKEN_WAIT_S = 1.0
    # The claim's moment, as QueueFlowWait sees it, is set this much earlier than the client measured it: the
    # flow statement reaches the server a little after the client's clock read, and a later moment would miss a
    # token that came just after the claim read its bucket (the worker would then sleep a whole poll interval).
    # A timer that fires a little early thus costs one more claim at once, never a poll interval.
    CLAIM_MOMENT_MARGIN_S = 0.005

    def __init__(
        self,
        worker_id: str,
        config: WorkerConfig,
        link: Link,
        tasks: dict[str, TaskSpec],
        executor: Executor,
        outcomes: OutcomeBuffer,
        due: DueTimes,
        stop: Stop,
        ahead: ClaimAhead | None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._config = config
        self._link = link
        self._tasks = tasks
        self._task_names = sorted(tasks)
        # Most apps declare no limits; then a claimed batch needs no second look.
        self._tasks_with_limits = {
            name for name, spec in tasks.items() if spec.max_attempts is not None or spec.timeout_s is not None
        }
        self._executor = executor
        self._outcomes = outcomes
        self._due = due
        self._stop = stop
        self._ahead = ahead
        self._metrics = metrics
        self._claim_answer_lost = False
        # Where this worker's claims of each queue start reading the ready index (repository.ReadyMarks).
        self.marks = {queue: repository.ReadyMarks() for queue in config.queues}
        self._flow_checked_until = 0.0
        self._claim_started = 0.0  # monotonic
        self._token_wakes = 0  # claims in a row, woken for a token, that took nothing
        self._slept = "woken"  # what ended the last sleep: "woken" (a wake-up), "token" (a token wait) or "poll"

    async def run(self) -> None:
        """Claim until shutdown begins (or, with --burst, until nothing is ready and nothing is running)."""
        config = self._config
        executor = self._executor
        ahead = self._ahead
        confirm_drained = False
        while not self._stop.draining:
            extra = ahead.extra(time.monotonic()) if ahead is not None else 0
            free = config.concurrency + extra - executor.in_flight
            # With jobs waiting here already, top up once half the margin is spent rather than for every slot.
            if free <= 0 or (executor.ready and free < (extra + 1) // 2):
                executor.slot_freed.clear()
                await executor.slot_freed.wait()
                continue
            claimed = await self.claim_once(free)
            if claimed is None:
                continue
            if claimed:
                confirm_drained = False
                self._token_wakes, self._slept = 0, "poll"  # the next empty claim did not follow a token wait
                continue
            if config.burst and executor.in_flight == 0:
                # Outcomes not yet written may release dependents: flush, then look once more.
                await self._outcomes.flush_all(timeout=None)
                if confirm_drained and await self._held_by_rate_limit():
                    # Ready jobs wait only for a limit's tokens or slots: this worker is not done until they ran.
                    await self._wait_for_work()
                    continue
                if confirm_drained:
                    logger.info("burst: nothing ready and nothing running; exiting")
                    self._stop.requested.set()
                    return
                confirm_drained = True
                continue
            await self._wait_for_work()

    async def claim_once(self, free: int) -> int | None:
        """Claim up to ``free`` jobs and hand them to the executor; None when the claim failed."""
        # Cleared before the claim, so a NOTIFY that lands while the claim runs is not lost.
        self._due.wake.clear()
        async with self._link.attempt("claim") as attempt:
            if self._claim_answer_lost:
                await self._release_unknown_running()
            return await self._claim(free)
        # The claim may have committed with its answer lost on the way back, or committed with what follows it
        # failing (a statement timeout on writing a task's limits): look for jobs held but never received
        # before claiming again.
        self._claim_answer_lost = True
        if not attempt.connection_lost:
            await self._stop.sleep(self._config.poll_interval)
        return None

    async def _claim(self, free: int) -> int:
        started = self._claim_started = time.monotonic()
        conn = await self._link.get()
        claimed = 0
        for queue in self._config.queues:
            jobs = await repository.claim_jobs(
                conn,
                self._worker_id,
                queue,
                self._task_names,
                min(free - claimed, self._config.batch_size),
                self.marks[queue],
            )
            if self._metrics is not None:
                self._metrics.claims.labels(queue, "yes" if jobs else "no").inc()
            if jobs:
                if self._tasks_with_limits:
                    await self._apply_task_limits(conn, jobs)
                self._executor.dispatch(jobs)
                claimed += len(jobs)
                if claimed >= free:
                    break
        if self._ahead is not None:
            self._ahead.claim_took(time.monotonic() - started)
        return claimed

    async def _release_unknown_running(self) -> None:
        """Give back jobs the database holds as running for this worker that it never received. Runs in the
        fetcher, the only claimer, so no claim of ours is in flight meanwhile."""
        conn = await self._link.get()
        known = self._executor.held()
        running = await repository.running_for_worker(conn, self._worker_id)
        lost = [(job_id, lease) for job_id, lease in running if lease not in known]
        self._claim_answer_lost = False
        if lost:
            logger.warning("giving back {} job(s) claimed by a query whose answer was lost", len(lost))
            for job_id, lease in lost:
                self._outcomes.add(released_unknown(job_id, lease))
            # They go back before where this worker's claims start reading: read everything next time.
            for marks in self.marks.values():
                marks.rewind()

    async def _apply_task_limits(self, conn: AsyncConnection, jobs: list[ClaimedJob]) -> None:
        # A task's declared max_attempts/timeout win over the job's; write them so the reaper agrees.
        changes = []
        for job in jobs:
            spec = self._tasks[job.task]
            max_attempts = spec.max_attempts if spec.max_attempts is not None else job.max_attempts
            timeout_s = spec.timeout_s if spec.timeout_s is not None else job.timeout_s
            if max_attempts != job.max_attempts or timeout_s != job.timeout_s:
                job.max_attempts, job.timeout_s = max_attempts, timeout_s
                changes.append(job)
        if changes:
            await repository.apply_task_limits(conn, self._worker_id, changes)

    async def _held_by_rate_limit(self) -> bool:
        """Whether ready jobs wait only for flow control (tokens, or slots others' runs hold); on a database
        error, assume they do (the burst worker looks again rather than exiting early)."""
        async with self._link.attempt("checking rate limits"):
            conn = await self._link.get()
            return await repository.rate_limited_backlog(conn, self._config.queues, self._task_names)
        return True

    async def _learn_flow_control(self) -> None:
        """Before sleeping after a claim that found nothing: come back when a bucket that had no whole token when
        that claim started has one (at once if it came meanwhile: a claim woken a little early by something
        else), and, while a queue caps its running jobs, whenever this worker's ended runs are written (they free
        the slots its claims count), instead of a poll interval later (docs/protocol.md, "When a held-back worker
        looks again")."""
        now = time.monotonic()
        # Claims after a token wait count toward the back-off; one woken by a NOTIFY or an outcome that found
        # nothing (another worker took the jobs) says nothing about the tokens and starts it again; a poll keeps it.
        if self._slept == "token":
            self._token_wakes += 1
        elif self._slept == "woken":
            self._token_wakes = 0
        self._slept = "woken"
        if now < self._flow_checked_until:
            return
        async with self._link.attempt("reading flow control"):
            conn = await self._link.get()
            since = now - self._claim_started + self.CLAIM_MOMENT_MARGIN_S
            wait = await repository.flow_wait(conn, self._config.queues, since)
            was_capped = self._outcomes.on_runs_ended is not None
            self._outcomes.on_runs_ended = self._due.wake.set if wait.capped else None
            if wait.capped and not was_capped:
                # Runs may have ended between the claim's count and now, with nobody told: look once more.
                self._due.wake.set()
            token_in = None
            if wait.token_in is not None:
                longest = min(self.MAX_TOKEN_WAIT_S, self._config.poll_interval)
                shortest = min(self.MIN_TOKEN_WAIT_S * 2 ** min(self._token_wakes, 30), longest)
                token_in = max(wait.token_in, shortest)
            self._due.wait_for_token(token_in)
            if not wait.controlled:
                self._flow_checked_until = now + self.FLOW_RECHECK_S

    async def _wait_for_work(self) -> None:
        """Sleep until a NOTIFY, a freed slot's worth of news, the next known due time or token, or the poll
        interval."""
        await self._learn_flow_control()
        timeout = self._due.sleep_for(self._config.poll_interval)
        executor = self._executor
        if self._config.burst and executor.in_flight:
            # A burst worker re-checks as soon as its last job ends, not a poll interval later.
            executor.slot_freed.clear()
            await wait_any(self._due.wake, executor.slot_freed, timeout=timeout)
        else:
            await wait_any(self._due.wake, timeout=timeout)
        waited = self._due.took_token_wait()
        self._slept = "woken" if self._due.wake.is_set() else "token" if waited else "poll"
