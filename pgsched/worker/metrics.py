"""Prometheus metrics of one worker, kept in a registry of its own and served on /metrics."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pgsched.models import ClaimedJob, Outcome

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class WorkerMetrics:
    """Counters by queue and task, a job-duration histogram, queue depth/lag gauges and flush latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("queue", "task")
        self.jobs_claimed = Counter("sched_jobs_claimed", "Jobs claimed", labels, registry=self.registry)
        self.claims = Counter(
            "sched_claims",
            "Claim statements run, by whether they took jobs (took=no: polls, and claims a limit held back)",
            ("queue", "took"),
            registry=self.registry,
        )
        self.jobs_succeeded = Counter("sched_jobs_succeeded", "Jobs that succeeded", labels, registry=self.registry)
        self.jobs_failed = Counter("sched_jobs_failed", "Jobs that failed for good", labels, registry=self.registry)
        self.jobs_retried = Counter(
            "sched_jobs_retried", "Failed attempts scheduled for a retry", labels, registry=self.registry
        )
        self.jobs_cancelled = Counter(
            "sched_jobs_cancelled", "Jobs cancelled while running", labels, registry=self.registry
        )
        self.jobs_released = Counter("sched_jobs_released", "Jobs released on shutdown", labels, registry=self.registry)
        self.outcomes_fenced = Counter(
            "sched_outcomes_fenced", "Late outcomes fenced off (another attempt owned the job)", registry=self.registry
        )
        self.job_duration = Histogram(
            "sched_job_duration_seconds", "Handler run time", labels, buckets=_DURATION_BUCKETS, registry=self.registry
        )
        self.flush_latency = Histogram(
            "sched_outcome_flush_seconds",
            "Time to write one batch of outcomes",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.queue_depth = Gauge("sched_queue_ready_jobs", "Jobs ready to run", ("queue",), registry=self.registry)
        self.queue_lag = Gauge(
            "sched_queue_oldest_ready_age_seconds", "Age of the oldest ready job", ("queue",), registry=self.registry
        )
        self.held_back = Gauge(
            "sched_queue_held_back_jobs",
            "Ready jobs held back by a limit of their queue (max_running, group_concurrency, group_rate)",
            ("queue", "control"),
            registry=self.registry,
        )
        self.running = Gauge("sched_worker_running_jobs", "Jobs running in this worker", registry=self.registry)
        self.abandoned_threads = Gauge(
            "sched_worker_abandoned_threads",
            "Sync handlers still running in threads the worker gave up on (timed out, or released at shutdown)",
            registry=self.registry,
        )
        self._task_of: dict[int, tuple[str, str]] = {}
        self._duration_children: dict[tuple[str, str], Any] = {}
        self._last_refresh = 0.0

    def watch_abandoned_threads(self, count: Callable[[], int]) -> None:
        """Read the number of abandoned sync handler threads from ``count`` at each scrape."""
        self.abandoned_threads.set_function(count)

    def claimed(self, jobs: Sequence[ClaimedJob]) -> None:
        """Count a claimed batch (one label lookup per task, not per job)."""
        tally = Tally((job.queue, job.task) for job in jobs)
        for (queue, task), n in tally.items():
            self.jobs_claimed.labels(queue, task).inc(n)
        for job in jobs:
            self._task_of[job.id] = (job.queue, job.task)

    def started(self) -> None:
        """A claimed job began to run (one claimed ahead may instead be given back before it starts)."""
        self.running.inc()

    def finished(self, job: ClaimedJob, seconds: float) -> None:
        """Observe one job's run time."""
        key = (job.queue, job.task)
        child = self._duration_children.get(key)
        if child is None:
            child = self._duration_children[key] = self.job_duration.labels(*key)
        child.observe(seconds)
        self.running.dec()

    def flushed(self, batch: Sequence[Outcome], result: Any, seconds: float) -> None:
        """Count the outcomes a flush wrote, by what became of them."""
        self.flush_latency.observe(seconds)
        written = set(result.written)
        retried = set(result.retried)
        tally: Tally[tuple[str, str, str]] = Tally()
        for outcome in batch:
            queue, task = self._task_of.pop(outcome.job_id, ("?", "?"))
            if outcome.job_id not in written:
                continue
            kind = "retried" if outcome.job_id in retried else outcome.kind
            tally[(kind, queue, task)] += 1
        counters = {
            "succeeded": self.jobs_succeeded,
            "failed": self.jobs_failed,
            "retried": self.jobs_retried,
            "cancelled": self.jobs_cancelled,
            "released": self.jobs_released,
        }
        for (kind, queue, task), n in tally.items():
            counters[kind].labels(queue, task).inc(n)
        if result.fenced:
            self.outcomes_fenced.inc(len(result.fenced))

    async def refresh(self, conn: Any, queues: list[str]) -> None:
        """Update queue depth and lag, at most every few seconds."""
        now = time.monotonic()
        if now - self._last_refresh < 5.0:
            return
        self._last_refresh = now
        from pgsched import repository

        for queue, depth, lag in await repository.ready_depth(conn, queues):
            self.queue_depth.labels(queue).set(depth)
            self.queue_lag.labels(queue).set(lag)
        for queue, control, count in await repository.held_back(conn, queues):
            self.held_back.labels(queue, control).set(count)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
