"""A model-based test of the job protocol (docs/protocol.md) against a real PostgreSQL.

A hypothesis state machine plays producers, operators and several simulated workers, each worker on its own
asyncio connection, through ``pgsched.repository``: enqueue (keys, dependencies, priorities, delays), claim,
succeed, fail, release, acknowledge a cancel, report progress, late outcomes of runs that lost their job (also
when the same worker claimed it again), heartbeats that stop, reaps, cancel, retry, pause and resume, rate
limits, concurrency limits (in all and per group, on jobs with and without groups), group rates, fair sharing
(on by default for jobs with groups), cleanup and the promotion of due jobs. It keeps a model of what every
job's state must be and, after every step, checks the database against the model and against the protocol's
invariants.

The invariants are those of docs/protocol.md, "Invariants". Bounded for CI; ``SCHED_MODEL_EXAMPLES`` (and
``SCHED_MODEL_STEPS``) run more; ``SCHED_MODEL_SHRINK=0`` reports a failure as found, without shrinking it."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import hypothesis.strategies as st
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pgsched import admin, db, repository
from pgsched.errors import InvalidInput, WrongState
from pgsched.models import ClaimedJob, NewJob, Outcome, OutcomeKind

T = TypeVar("T")

EXAMPLES = int(os.environ.get("SCHED_MODEL_EXAMPLES", "100"))
STEPS = int(os.environ.get("SCHED_MODEL_STEPS", "40"))
PHASES = [p for p in Phase if os.environ.get("SCHED_MODEL_SHRINK", "1") == "1" or p != Phase.shrink]

QUEUES = ("q1", "q2")
TASKS = ("t", "u")
KEYS = (None, None, "k1", "k2")
GROUPS = (None, "g1", "g2", "g2")
PRIORITIES = (-5, 0, 5)
# Each simulated worker declares its own liveness contract; a heartbeat aged 30 s makes only the first stale.
STALE_AFTER_S = (10.0, 60.0, 600.0)
TIMEOUT_GRACE_S = (1.0, 10.0, 30.0)
HEARTBEAT_AGES_S = (30.0, 300.0, 3000.0)
# How far past its timeout a hung run is: beyond the first worker's grace only, the first two's, or all.
OVERRUN_S = (5.0, 20.0, 3600.0)
# Token buckets: one so slow that nothing refills during an example, one that refills within milliseconds.
RATES = (0.001, 1000.0)
LIVE = ("waiting", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
FAR_S = 3600.0
CLOCK_SLACK_S = 0.002


# The arguments of a claim and of an outcome, shared by the rules that draw them more often.
class ModelMarks(repository.ReadyMarks):
    """A worker's reading positions whose full pass comes when the model says (the rule full_pass_due), not
    with time: a real worker's claims come milliseconds apart, the model's seconds."""

    FULL_PASS_EVERY_S = 10**6
    CHEAP_PROBE_S = 0.0  # claims read from positions, as while vacuum is held back
    # No margin before a position: the model's steps come milliseconds apart, and a margin of 50 ms would read
    # again most of what a claim passed (the rules of what a claim may pass over are the same with any margin).
    MARGIN = timedelta(0)


class ModelDueMarks(repository.DueMarks):
    """A worker's promotion positions whose full pass comes when the model says (promote_due's argument)."""

    CHEAP_S = 0.0
    FULL_MIN_S = FULL_MAX_S = 10.0**6


CLAIM_ARGS = {
    "w": st.integers(0, 2),
    "queue": st.sampled_from(QUEUES),
    "tasks": st.sampled_from([["t"], ["t", "u"], ["t", "u"]]),
    "limit": st.integers(1, 4),
}
OUTCOME_ARGS = {
    "pick": st.integers(0, 10**6),
    "kind": st.sampled_from(list(OutcomeKind)),
    "retryable": st.booleans(),
    "far": st.booleans(),
}


@dataclass
class Job:
    """What the database must hold for one job."""

    id: int
    queue: str
    task: str
    priority: int
    max_attempts: int
    key: str | None
    parents: set[int]
    state: str
    due: bool
    group: str | None = None
    attempt: int = 0
    lease: int | None = None
    worker: str | None = None
    cancel_requested: bool = False
    overdue: bool = False
    result: Any = None
    progress: Any = None


@dataclass
class Worker:
    """A simulated worker: its id, its contract, and whether the database should judge it alive."""

    id: str
    stale_after_s: float
    timeout_grace_s: float
    registered: bool = False
    stale: bool = False
    # Its last beat was set into the past: it stopped beating, even if not yet long enough to be stale.
    aged: bool = False


@dataclass(frozen=True)
class Run:
    """One claim of one job: the lease that fences everything the run writes."""

    job_id: int
    lease: int
    worker: str


@dataclass
class Bucket:
    """A queue's token bucket as bounds: the level lies in [low, high] at the last claim or setting, which
    happened between ``since_start`` and ``since_end`` (monotonic clock)."""

    rate: float
    burst: float
    low: float
    high: float
    since_start: float
    since_end: float

    def level(self, start: float, end: float) -> tuple[float, float]:
        """Bounds of the level seen by a claim that ran between ``start`` and ``end``, widened by a couple of
        milliseconds for the difference between this process's clock and the server's."""
        low = min(self.burst, self.low + self.rate * max(0.0, start - self.since_end - CLOCK_SLACK_S))
        high = min(self.burst, self.high + self.rate * (end - self.since_start + CLOCK_SLACK_S))
        return low, high + 1e-9


@dataclass
class QueueControl:
    paused: bool = False
    bucket: Bucket | None = None
    max_running: int | None = None
    group_concurrency: int | None = None
    # Group rates: the rate and burst every group gets, and the bucket of each group a claim has seen.
    group_rate: tuple[float, float] | None = None
    group_buckets: dict[str, Bucket] = field(default_factory=dict)
    group_rate_since: tuple[float, float] = (0.0, 0.0)

    def group_bucket(self, group: str) -> Bucket:
        """``group``'s bucket: full when the rate was set, unless a claim has charged it since."""
        assert self.group_rate is not None
        if group not in self.group_buckets:
            rate, burst = self.group_rate
            self.group_buckets[group] = Bucket(rate, burst, burst, burst, *self.group_rate_since)
        return self.group_buckets[group]


class Harness:
    """Connections shared by every example of one test: a producer/operator connection, one asyncio
    connection per simulated worker plus the reaper's, and one event loop to run them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.conn = db.connect(dsn)
        self.workers = [
            Worker(str(uuid.uuid4()), stale, grace) for stale, grace in zip(STALE_AFTER_S, TIMEOUT_GRACE_S, strict=True)
        ]
        self.worker_conns = {w.id: self.run(db.connect_async(dsn)) for w in self.workers}
        self.reaper = self.run(db.connect_async(dsn))
        self.pauser = self.run(psycopg.AsyncConnection.connect(dsn, autocommit=True))
        # How often the rarer situations came up, printed at the end (pytest -s) to show what was explored.
        self.seen: collections.Counter[str] = collections.Counter()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def reset(self) -> None:
        self.conn.run(
            "TRUNCATE sched_jobs, sched_job_history, sched_job_deps, sched_workers, sched_queues, sched_schedules,"
            " sched_group_buckets RESTART IDENTITY"
        )
        self.conn.run("UPDATE sched_history SET current_slot = 0, since = now()")

    def close(self) -> None:
        for conn in [*self.worker_conns.values(), self.reaper]:
            self.run(conn.close())
        self.run(self.pauser.close())
        self.conn.close()
        self.loop.close()


@pytest.fixture
def harness(dsn: str) -> Iterator[Harness]:
    h = Harness(dsn)
    try:
        yield h
    finally:
        h.close()


class ProtocolModel(RuleBasedStateMachine):
    """Steps against the database and the model side by side; see the module docstring."""

    h: Harness

    def __init__(self) -> None:
        super().__init__()
        self.h.reset()
        self.jobs: dict[int, Job] = {}
        self.runs: list[Run] = []
        self.leases: set[int] = set()
        self.queues = {q: QueueControl() for q in QUEUES}
        self.workers = {w.id: Worker(w.id, w.stale_after_s, w.timeout_grace_s) for w in self.h.workers}
        # Where each worker's claims of a queue start reading (as a worker's fetcher keeps them; the model's
        # claims name varying tasks, so a position can lie past jobs of a task the last claim did not take).
        self.marks: dict[tuple[str, str], repository.ReadyMarks] = {}
        self.due_marks = ModelDueMarks()
        for worker in self.workers.values():
            self._register(worker)

    # --- helpers ------------------------------------------------------------------------------------------

    def _register(self, worker: Worker) -> None:
        self.h.run(
            repository.register_worker(
                self.h.worker_conns[worker.id],
                worker.id,
                "model",
                1,
                list(QUEUES),
                list(TASKS),
                4,
                stale_after_s=worker.stale_after_s,
                timeout_grace_s=worker.timeout_grace_s,
            )
        )
        worker.registered, worker.stale, worker.aged = True, False, False

    def _worker(self, pick: int) -> Worker:
        return list(self.workers.values())[pick % len(self.workers)]

    def _job(self, pick: int, states: tuple[str, ...] | None = None) -> Job | None:
        ids = sorted(i for i, j in self.jobs.items() if states is None or j.state in states)
        return self.jobs[ids[pick % len(ids)]] if ids else None

    def _children(self, job_id: int) -> list[Job]:
        return [j for j in self.jobs.values() if job_id in j.parents]

    def _current(self, run: Run) -> bool:
        job = self.jobs.get(run.job_id)
        return job is not None and job.state == "running" and job.lease == run.lease

    def _finish(self, job: Job, state: str) -> None:
        job.state = state
        if state == "queued":
            job.worker = None

    def _settle(self, finished: list[Job]) -> None:
        """Dependents of jobs that just finished: a success releases them once every parent succeeded; a
        failure or cancel cancels every waiting descendant (docs/protocol.md, "Dependencies")."""
        doomed: set[int] = set()
        frontier = [j.id for j in finished if j.state != "succeeded"]
        while frontier:
            for child in self._children(frontier.pop()):
                if child.id not in doomed:
                    doomed.add(child.id)
                    frontier.append(child.id)
        for job_id in doomed:
            if self.jobs[job_id].state == "waiting":
                self.jobs[job_id].state = "cancelled"
        for parent in finished:
            if parent.state != "succeeded":
                continue
            for child in self._children(parent.id):
                if child.state == "waiting" and child.id not in doomed and self._pending(child) == 0:
                    child.state = "queued"

    def _pending(self, job: Job) -> int:
        return sum(1 for p in job.parents if p in self.jobs and self.jobs[p].state != "succeeded")

    def _holder(self, queue: str, key: str | None, besides: int | None = None) -> Job | None:
        if key is None:
            return None
        for job in self.jobs.values():
            if job.queue == queue and job.key == key and job.state in LIVE and job.id != besides:
                return job
        return None

    def _claimable(self, queue: str, tasks: list[str]) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j.queue == queue and j.task in tasks and j.state == "queued" and j.due and not j.cancel_requested
        ]

    def _row(self, job_id: int) -> tuple | None:
        return self.h.conn.row(
            "SELECT state::text, attempt, lease, worker_id::text, result, progress, error, max_attempts"
            " FROM sched_jobs_all WHERE id = %s",
            (job_id,),
        )

    def _add_job(self, new_id: int, spec: NewJob, parents: set[int]) -> Job:
        assert new_id not in self.jobs and all(new_id > i for i in self.jobs), f"job id {new_id} reused"
        job = Job(
            new_id,
            spec.queue,
            spec.task,
            spec.priority,
            spec.max_attempts,
            spec.key,
            parents,
            "queued",
            due=not spec.delay_s,
            group=spec.group,
        )
        self.jobs[new_id] = job
        if self._pending(job):
            job.state = "waiting"
        return job

    # --- producers ----------------------------------------------------------------------------------------

    jobs_spec = st.builds(
        NewJob,
        task=st.sampled_from(TASKS),
        queue=st.sampled_from(["q1", "q1", "q2"]),
        priority=st.sampled_from(PRIORITIES),
        delay_s=st.sampled_from([None, None, None, FAR_S]),
        max_attempts=st.integers(1, 2),
        key=st.sampled_from(KEYS),
        group=st.sampled_from(GROUPS),
    )

    @rule(spec=jobs_spec, picks=st.lists(st.integers(0, 10**6), max_size=2))
    def enqueue(self, spec: NewJob, picks: list[int]) -> None:
        ids = sorted(self.jobs)
        parents = {ids[p % len(ids)] for p in picks} if ids else set()
        spec.after = sorted(parents)
        dead = [p for p in spec.after if self.jobs[p].state in ("failed", "cancelled")]
        holder = self._holder(spec.queue, spec.key)
        try:
            got = repository.enqueue(self.h.conn, spec)
        except InvalidInput as exc:
            assert dead, f"enqueue refused: {exc.message}"
            return
        assert not dead, f"enqueue after failed or cancelled job {dead[0]} was accepted"
        if holder is not None:
            assert got == (holder.id, True), f"key {spec.key} is held by live job {holder.id}, got {got}"
            self.h.seen[f"enqueue deduplicated onto a {holder.state} job"] += 1
            return
        assert not got.deduplicated
        self._add_job(got.id, spec, parents)

    @rule(specs=st.lists(jobs_spec, min_size=1, max_size=6))
    def enqueue_many(self, specs: list[NewJob]) -> None:
        got = repository.enqueue_many(self.h.conn, specs)
        assert len(got) == len(specs)
        for spec, added in zip(specs, got, strict=True):
            holder = self._holder(spec.queue, spec.key)
            if holder is not None:
                assert added == (holder.id, True), f"key {spec.key} is held by live job {holder.id}, got {added}"
            else:
                assert not added.deduplicated, f"{added} deduplicated though no live job holds {spec.key}"
                self._add_job(added.id, spec, set())

    # Producers keep the queues fed, or most claims would find nothing: one more rule each.
    @rule(spec=jobs_spec, picks=st.lists(st.integers(0, 10**6), max_size=2))
    def enqueue_more(self, spec: NewJob, picks: list[int]) -> None:
        self.enqueue(spec, picks)

    @rule(specs=st.lists(jobs_spec, min_size=1, max_size=6))
    def enqueue_many_more(self, specs: list[NewJob]) -> None:
        self.enqueue_many(specs)

    # --- workers ------------------------------------------------------------------------------------------

    @rule(**CLAIM_ARGS)
    def claim(self, w: int, queue: str, tasks: list[str], limit: int) -> None:
        worker = self._worker(w)
        if not worker.registered:
            return
        claimable = self._claimable(queue, tasks)
        marks = self.marks.setdefault((worker.id, queue), ModelMarks())
        segments = marks.segments(time.monotonic())
        skipped = self._skipped_by(segments, queue, claimable)
        ready = self._ready_in_claim_order(claimable)
        start = time.monotonic()
        claimed = self.h.run(
            repository.claim_jobs(self.h.worker_conns[worker.id], worker.id, queue, tasks, limit, marks)
        )
        end = time.monotonic()
        self.h.seen["claim from marks" if skipped is not None else "claim, full pass"] += 1
        self.h.seen["claim from marks, reading known groups from their positions"] += bool(
            skipped is not None and segments.group
        )
        if skipped:
            self.h.seen["claim from marks skipped a claimable job"] += 1
        self._check_claim(queue, claimable, claimed, limit, start, end, skipped=skipped or set())
        self._check_order_in_groups(ready, claimed, skipped or set())
        self._take(worker, claimed)
        self.h.seen[f"claim took {min(len(claimed), 2)}{'+' if len(claimed) >= 2 else ''}"] += 1

    @rule(w=st.integers(0, 2), queue=st.sampled_from(QUEUES))
    def full_pass_due(self, w: int, queue: str) -> None:
        marks = self.marks.get((self._worker(w).id, queue))
        if marks is not None:
            marks.rewind()

    @rule(w=st.integers(0, 2), queue=st.sampled_from(QUEUES))
    def probe_ready(self, w: int, queue: str) -> None:
        """The worker's maintenance probe: moves positions back to ready jobs that lie before them."""
        marks = self.marks.get((self._worker(w).id, queue))
        if marks is None:
            return
        worker = self._worker(w)
        conn = self.h.worker_conns[worker.id]
        if self.h.run(repository.probe_ready(conn, queue, sorted(TASKS), marks, now=float("inf"))):
            self.h.seen["probe moved a position back"] += 1

    def _skipped_by(self, segments: repository.Segments, queue: str, claimable: list[Job]) -> set[int] | None:
        """The claimable jobs a claim from a worker's marks may pass over (docs/protocol.md, "Where a claim starts
        reading"): ready jobs outside its segments of the ready index, ready jobs of a group it knows that lie
        before where it reads that group (the turns of sched_claim_limited), and due deferred jobs outside its
        2 s window (counted from a second earlier, for the time that passes before the claim). None for a full
        pass."""
        if segments.full:
            return None
        rows = self.h.conn.rows(
            "SELECT id, priority, run_at, deferred, run_at < now() - interval '1 second', group_name"
            " FROM sched_jobs_all WHERE id = ANY(%s)",
            ([j.id for j in claimable],),
        )
        skipped = set()
        for job_id, priority, run_at, deferred, due_long_ago, group in rows:
            if deferred:
                if due_long_ago:
                    skipped.add(job_id)
            elif not segments.covers(priority, run_at, job_id):
                skipped.add(job_id)
            elif group is not None and not segments.covers_in_group(group, priority, run_at, job_id):
                skipped.add(job_id)
                self.h.seen["claim from marks may pass a job before its group's position"] += 1
        return skipped

    def _ready_in_claim_order(self, claimable: list[Job]) -> dict[int, tuple[str | None, tuple]]:
        """The claimable jobs that are in the ready index (not deferred), each with its group and its place in
        claim order."""
        rows = self.h.conn.rows(
            "SELECT id, group_name, priority, run_at FROM sched_jobs WHERE id = ANY(%s) AND NOT deferred",
            ([j.id for j in claimable],),
        )
        return {job_id: (group, (-priority, run_at, job_id)) for job_id, group, priority, run_at in rows}

    def _check_order_in_groups(
        self, ready: dict[int, tuple[str | None, tuple]], claimed: list, skipped: set[int]
    ) -> None:
        """Within a group (and among the jobs without one), a claim takes ready jobs in claim order, whether it
        takes them in the head or in the group's turn: a ready job it leaves never comes before one of its group
        it takes, unless the claim may pass it over (_skipped_by)."""
        taken = {c.id for c in claimed}
        for job_id, (group, place) in ready.items():
            if job_id in taken or job_id in skipped:
                continue
            later = [t for t in taken if t in ready and ready[t][0] == group and ready[t][1] > place]
            assert not later, f"claim took job {later[0]} of group {group} and left job {job_id}, which comes before it"

    def _check_claim(
        self,
        queue: str,
        claimable: list[Job],
        claimed: list,
        limit: int,
        start: float,
        end: float,
        *,
        raced_pause: bool = False,
        skipped: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        control = self.queues[queue]
        by_id = {j.id: j for j in claimable}
        for c in claimed:
            assert c.id in by_id, f"claimed job {c.id} ({self._describe(c.id)}) was not claimable"
        if skipped:
            # A claim from marks may pass over these (until the worker's next full pass): the counts and the
            # order below are checked among the jobs it reads.
            taken = {c.id for c in claimed}
            claimable = [j for j in claimable if j.id not in skipped or j.id in taken]
            by_id = {j.id: j for j in claimable}
        if control.paused:
            assert claimed == [], f"paused queue {queue} gave {[c.id for c in claimed]}"
            return
        most = least = min(limit, len(claimable))
        bucket = control.bucket
        low = high = math.inf
        if bucket is not None:
            low, high = bucket.level(start, end)
            most, least = min(most, math.floor(high)), min(least, math.floor(low))
        group_levels = self._check_group_rates(queue, claimable, claimed, start, end)
        if group_levels:
            # Only the jobs whose group surely had tokens must be taken.
            surely = collections.Counter(j.group for j in claimable)
            allowed = sum(n if g is None else min(n, math.floor(group_levels[g][0])) for g, n in surely.items())
            least = min(least, allowed)
        if raced_pause:
            # A claim that raced a pause either ran first (within its bucket) or saw the pause and took nothing.
            least = 0
        if control.max_running is not None or control.group_concurrency is not None or group_levels:
            self._check_limited_claim(queue, claimable, claimed, least, group_levels)
            least = min(least, len(claimed))
        assert least <= len(claimed) <= most, (
            f"claim on {queue} took {len(claimed)} jobs: {len(claimable)} claimable, limit {limit},"
            f" bucket level in [{low:.3f}, {high:.3f}]"
        )
        # Among ready jobs, higher priority first, whether they were ever deferred or not.
        taken = {c.id for c in claimed}
        left = [
            j.priority for j in claimable if j.id not in taken and not self._held_back(queue, j, claimed, group_levels)
        ]
        if claimed and left:
            assert min(by_id[i].priority for i in taken) >= max(left), "a lower-priority job was claimed first"
        if bucket is not None:
            bucket.low, bucket.high = max(0.0, low - len(claimed)), high - len(claimed)
            bucket.since_start, bucket.since_end = start, end

    def _running(self, queue: str, group: str | None = None) -> int:
        return sum(
            1
            for j in self.jobs.values()
            if j.state == "running" and j.queue == queue and (not group or j.group == group)
        )

    def _held_back(
        self, queue: str, job: Job, claimed: list, group_levels: dict[str, tuple[float, float]] | None = None
    ) -> bool:
        """Whether a concurrency limit, or a group's bucket that may be empty, holds ``job`` back once ``claimed``
        run."""
        control = self.queues[queue]
        groups = [self.jobs[c.id].group for c in claimed]
        if control.max_running is not None and self._running(queue) + len(claimed) >= control.max_running:
            return True
        if group_levels and job.group is not None and group_levels[job.group][0] - groups.count(job.group) < 1:
            return True
        return (
            control.group_concurrency is not None
            and job.group is not None
            and self._running(queue, job.group) + groups.count(job.group) >= control.group_concurrency
        )

    def _check_group_rates(
        self, queue: str, claimable: list[Job], claimed: list, start: float, end: float
    ) -> dict[str, tuple[float, float]]:
        """Invariant 10: a claim takes no more of a group's jobs than the group's bucket holds. Returns the
        bounds of the level of each claimable group's bucket before the claim (none without group rates), and
        charges the model's buckets."""
        control = self.queues[queue]
        if control.group_rate is None or control.paused:
            return {}
        taken = collections.Counter(self.jobs[c.id].group for c in claimed)
        levels = {}
        for group in {j.group for j in claimable if j.group is not None}:
            bucket = control.group_bucket(group)
            low, high = bucket.level(start, end)
            levels[group] = (low, high)
            assert taken[group] <= math.floor(high), (
                f"claim took {taken[group]} jobs of group {group} of {queue}, its bucket in [{low:.3f}, {high:.3f}]"
            )
            self.h.seen["group rate held a group back"] += taken[group] == 0 and high < 1
            self.h.seen["group rate bounded a claim"] += taken[group] > 0 and taken[group] == math.floor(high)
            if taken[group]:
                bucket.low, bucket.high = max(0.0, low - taken[group]), high - taken[group]
                bucket.since_start, bucket.since_end = start, end
        return levels

    def _check_limited_claim(
        self,
        queue: str,
        claimable: list[Job],
        claimed: list,
        least: int,
        group_levels: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        """Invariant 9: a claim never takes a queue past max_running, nor a group past group_concurrency; and it
        takes something whenever a claimable job has a free slot and, with group rates, a token (the limits hold
        jobs back, nothing else)."""
        control = self.queues[queue]
        taken = collections.Counter(self.jobs[c.id].group for c in claimed)
        if control.max_running is not None and claimed:
            total = self._running(queue) + len(claimed)
            assert total <= control.max_running, f"{queue} runs {total} jobs, max_running {control.max_running}"
            self.h.seen["limited claim filled the queue"] += total == control.max_running
        if control.group_concurrency is not None:
            for group, n in taken.items():
                if group is not None:
                    total = self._running(queue, group) + n
                    assert total <= control.group_concurrency, f"group {group} of {queue} runs {total} jobs"
        if not claimed and least > 0:
            free = control.max_running is None or self._running(queue) < control.max_running
            open_groups = [
                j
                for j in claimable
                if j.group is None
                or (
                    (control.group_concurrency is None or self._running(queue, j.group) < control.group_concurrency)
                    and (not group_levels or group_levels[j.group][0] >= 1)
                )
            ]
            assert not (free and open_groups), (
                f"limited claim on {queue} took nothing though job {open_groups[0].id} had a slot"
            )
            self.h.seen["limited claim held back"] += 1

    def _take(self, worker: Worker, claimed: list) -> None:
        for c in claimed:
            job = self.jobs[c.id]
            assert c.lease is not None and c.lease not in self.leases, f"lease {c.lease} handed out twice"
            assert c.attempt == job.attempt + 1 and c.max_attempts == job.max_attempts and c.queue == job.queue
            self.leases.add(c.lease)
            if any(r.job_id == c.id and r.worker == worker.id for r in self.runs):
                self.h.seen["a worker claims a job it ran before"] += 1
            job.state, job.attempt, job.lease, job.worker, job.overdue = "running", c.attempt, c.lease, worker.id, False
            self.runs.append(Run(c.id, c.lease, worker.id))

    @precondition(lambda self: self.runs)
    @rule(**OUTCOME_ARGS)
    def outcome(self, pick: int, kind: OutcomeKind, retryable: bool, far: bool) -> None:
        """Record how a run ended: the current run of its job, or one that lost it long ago."""
        run = self.runs[pick % len(self.runs)]
        current = self._current(run)
        before = self._row(run.job_id)
        outcome = Outcome(
            run.job_id,
            run.lease,
            kind,
            result=json.dumps({"lease": run.lease}) if kind == OutcomeKind.SUCCEEDED else None,
            error=f"run {run.lease} {kind}" if kind != OutcomeKind.SUCCEEDED else None,
            retryable=retryable,
            backoff_base_s=FAR_S if far else 0.0,
            backoff_cap_s=4 * FAR_S,
        )
        result = self.h.run(repository.record_outcomes(self.h.worker_conns[run.worker], run.worker, [outcome]))
        if not current:
            same = self.jobs.get(run.job_id)
            again = (
                " (its worker runs the job again)"
                if same is not None and same.state == "running" and same.worker == run.worker
                else ""
            )
            self.h.seen[f"late {kind} fenced{again}"] += 1
            assert result.fenced == [run.job_id] and result.written == [], (
                f"outcome {kind} of stale lease {run.lease} on job {run.job_id} was not fenced: {result}"
            )
            assert self._row(run.job_id) == before, f"a fenced {kind} of lease {run.lease} changed job {run.job_id}"
            return
        assert result.written == [run.job_id] and result.fenced == [], f"current lease {run.lease} fenced: {result}"
        job = self.jobs[run.job_id]
        self.h.seen[f"{kind} recorded" + (" after a cancel request" if job.cancel_requested else "")] += 1
        if kind == OutcomeKind.SUCCEEDED:
            job.state, job.result = "succeeded", {"lease": run.lease}
        elif job.cancel_requested:
            # Once a cancel was requested, a failure or a release ends the job cancelled, never queued again.
            job.state = "cancelled"
        elif kind == OutcomeKind.FAILED:
            if retryable and job.attempt < job.max_attempts:
                self._finish(job, "queued")
                job.due = not far
            else:
                job.state = "failed"
        elif kind == OutcomeKind.CANCELLED:
            job.state = "cancelled"
        else:
            self._finish(job, "queued")
            job.attempt -= 1
        if job.state in TERMINAL:
            self._settle([job])

    # Claims and outcomes are most of what workers do: two more rules each, so that hypothesis, which picks
    # among rules evenly, draws them as often as the rest together.
    @rule(**CLAIM_ARGS)
    def claim_more(self, w: int, queue: str, tasks: list[str], limit: int) -> None:
        self.claim(w, queue, tasks, limit)

    @precondition(lambda self: self.runs)
    @rule(**OUTCOME_ARGS)
    def outcome_more(self, pick: int, kind: OutcomeKind, retryable: bool, far: bool) -> None:
        self.outcome(pick, kind, retryable, far)

    @precondition(lambda self: any(self._superseded(run) for run in self.runs))
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from(list(OutcomeKind)), retryable=st.booleans())
    def outcome_of_a_superseded_run(self, pick: int, kind: OutcomeKind, retryable: bool) -> None:
        """The late outcome that fencing exists for: a run whose job runs again under a newer lease."""
        late = [i for i, run in enumerate(self.runs) if self._superseded(run)]
        self.outcome(late[pick % len(late)], kind, retryable, False)

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from(list(OutcomeKind)), retryable=st.booleans())
    def cancel_then_finish(self, pick: int, kind: OutcomeKind, retryable: bool) -> None:
        """An operator cancels a running job and its run ends right after, however it ends: the handler saw
        the request and stopped, failed, was released at shutdown, or had already succeeded."""
        current = [i for i, run in enumerate(self.runs) if self._current(run)]
        index = current[pick % len(current)]
        self.cancel(sorted(self.jobs).index(self.runs[index].job_id))
        self.outcome(index, kind, retryable, False)

    def _superseded(self, run: Run) -> bool:
        job = self.jobs.get(run.job_id)
        return job is not None and job.state == "running" and job.lease != run.lease

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from([OutcomeKind.RELEASED, OutcomeKind.FAILED]))
    def give_back_and_claim_again(self, pick: int, kind: OutcomeKind) -> None:
        """A worker gives a job back (a release, a failure retried at once) and claims again at once: often
        the same job, under a new lease."""
        current = [i for i, run in enumerate(self.runs) if self._current(run)]
        run = self.runs[current[pick % len(current)]]
        self.outcome(current[pick % len(current)], kind, True, False)
        worker = self.workers[run.worker]
        self.claim(list(self.workers).index(worker.id), self.jobs[run.job_id].queue, list(TASKS), 4)

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from(list(OutcomeKind)), retryable=st.booleans())
    def outcome_of_a_current_run(self, pick: int, kind: OutcomeKind, retryable: bool) -> None:
        current = [i for i, run in enumerate(self.runs) if self._current(run)]
        self.outcome(current[pick % len(current)], kind, retryable, False)

    @precondition(lambda self: self.runs)
    @rule(pick=st.integers(0, 10**6), max_attempts=st.integers(1, 3))
    def task_limits(self, pick: int, max_attempts: int) -> None:
        """A worker stores the attempt budget its task declares on a job it claimed (never below the attempts
        already made); fenced by lease like every write of a run."""
        run = self.runs[pick % len(self.runs)]
        current = self._current(run)
        before = self._row(run.job_id)
        job = self.jobs.get(run.job_id)
        held = ClaimedJob(run.job_id, job.task if job else "t", {}, 1, max_attempts, 300.0, "q1", run.lease)
        self.h.run(repository.apply_task_limits(self.h.worker_conns[run.worker], run.worker, [held]))
        if current:
            assert job is not None
            job.max_attempts = max(max_attempts, job.attempt)
        else:
            assert self._row(run.job_id) == before, f"fenced task limits of lease {run.lease} changed job {run.job_id}"

    @precondition(lambda self: self.runs)
    @rule(pick=st.integers(0, 10**6))
    def progress(self, pick: int) -> None:
        run = self.runs[pick % len(self.runs)]
        current = self._current(run)
        before = self._row(run.job_id)
        report = {"lease": run.lease, "at": time.monotonic()}
        conn = self.h.worker_conns[run.worker]
        written = self.h.run(repository.set_progress(conn, run.worker, run.job_id, run.lease, json.dumps(report)))
        assert written == current, f"progress of lease {run.lease} on job {run.job_id}: written {written}"
        if current:
            self.jobs[run.job_id].progress = report
        else:
            assert self._row(run.job_id) == before, f"fenced progress of lease {run.lease} changed job {run.job_id}"

    @rule(w=st.integers(0, 2))
    def heartbeat(self, w: int) -> None:
        worker = self._worker(w)
        running = sum(1 for j in self.jobs.values() if j.state == "running" and j.worker == worker.id)
        alive = self.h.run(repository.heartbeat_worker(self.h.worker_conns[worker.id], worker.id, running))
        assert alive == worker.registered
        if alive:
            worker.stale = worker.aged = False
        else:
            # A worker that finds its row gone was reaped: it registers again, under the same id.
            self._register(worker)

    @rule(w=st.integers(0, 2), age=st.sampled_from(HEARTBEAT_AGES_S))
    def stop_beating(self, w: int, age: float) -> None:
        """The worker's last beat is ``age`` seconds old (a pause, a partition, a dead process)."""
        worker = self._worker(w)
        self.h.conn.run(
            "UPDATE sched_workers SET heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
            (age, worker.id),
        )
        if worker.registered:
            worker.stale, worker.aged = age > worker.stale_after_s, True

    @rule(w=st.integers(0, 2), queue=st.sampled_from(QUEUES))
    def stall_and_come_back(self, w: int, queue: str) -> None:
        """A worker stops long enough to be reaped (SIGSTOP, a partition), comes back, registers again under
        the same id and claims: possibly the very jobs it was running, under new leases."""
        self.stop_beating(w, HEARTBEAT_AGES_S[-1])
        self.reap()
        self.heartbeat(w)
        self.claim(w, queue, list(TASKS), 4)

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6), late=st.sampled_from(OVERRUN_S))
    def overrun(self, pick: int, late: float) -> None:
        """A run outlives its timeout by ``late`` seconds (its handler hangs): overdue once that is more than
        the grace its worker registered."""
        job = self._job(pick, ("running",))
        assert job is not None
        self.h.conn.run(
            "UPDATE sched_jobs SET started_at = now() - timeout - make_interval(secs => %s) WHERE id = %s",
            (late, job.id),
        )
        # Had the run really started that long ago, a floor of its queue's count that moved since would have it
        # among the runs below it (docs/protocol.md, "Where the count starts reading").
        self.h.conn.run(
            "UPDATE sched_queues q SET running_below = q.running_below || j.id FROM sched_jobs j"
            " WHERE j.id = %s AND q.queue = j.queue AND j.started_at < q.running_floor",
            (job.id,),
        )
        job.overdue = late > self.workers[job.worker].timeout_grace_s  # type: ignore[index]

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6), late=st.sampled_from(OVERRUN_S))
    def hang_and_reap(self, pick: int, late: float) -> None:
        """A handler hangs past its timeout and the reaper comes by."""
        self.overrun(pick, late)
        self.reap()

    @rule()
    def reap(self) -> None:
        # Workers that did not stop beating beat as they would between two reaps.
        for worker in self.workers.values():
            if worker.registered and not worker.aged:
                running = sum(1 for j in self.jobs.values() if j.state == "running" and j.worker == worker.id)
                conn = self.h.worker_conns[worker.id]
                assert self.h.run(repository.heartbeat_worker(conn, worker.id, running))
        result = self.h.run(repository.reap_stale(self.h.reaper, wait=True))
        assert result.ran
        lost = [
            j
            for j in self.jobs.values()
            if j.state == "running"
            and (
                not self.workers[j.worker].registered  # type: ignore[index]
                or self.workers[j.worker].stale  # type: ignore[index]
                or j.overdue
            )
        ]
        expected = {"queued": set(), "failed": set(), "cancelled": set()}
        for job in lost:
            if job.cancel_requested:
                job.state = "cancelled"
            elif job.attempt >= job.max_attempts:
                job.state = "failed"
            else:
                self._finish(job, "queued")
                job.due = True
            expected[job.state].add(job.id)
        self._settle([j for j in lost if j.state in TERMINAL])
        for state, ids in expected.items():
            if ids:
                self.h.seen[f"reap: {state}"] += 1
        assert set(result.requeued) == expected["queued"], f"reap requeued {result.requeued}, expected {expected}"
        assert set(result.failed) == expected["failed"], f"reap failed {result.failed}, expected {expected}"
        assert set(result.cancelled) == expected["cancelled"], f"reap cancelled {result.cancelled}: {expected}"
        removed = [w for w in self.workers.values() if w.registered and w.stale]
        assert result.workers_removed == len(removed), f"reap removed {result.workers_removed} workers"
        for worker in removed:
            worker.registered = worker.stale = False

    # --- operators ----------------------------------------------------------------------------------------

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 10**6))
    def cancel(self, pick: int) -> None:
        job = self._job(pick)
        assert job is not None
        try:
            got = repository.cancel_job(self.h.conn, job.id)
        except WrongState:
            assert job.state in TERMINAL, f"cancel of {job.state} job {job.id} refused"
            return
        assert job.state in LIVE, f"cancel of {job.state} job {job.id} accepted: {got}"
        if job.state == "running":
            assert got.state == "running"
            job.cancel_requested = True
            self.h.seen["cancel requested of a running job"] += 1
            return
        assert got.state == "cancelled"
        job.state = "cancelled"
        self._settle([job])

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 10**6))
    def retry(self, pick: int) -> None:
        job = self._job(pick)
        assert job is not None
        parents = [self.jobs[p] for p in job.parents if p in self.jobs]
        revivable = (
            job.state in ("failed", "cancelled")
            and not any(p.state in ("failed", "cancelled") for p in parents)
            and self._holder(job.queue, job.key, besides=job.id) is None
        )
        try:
            got = repository.retry_job(self.h.conn, job.id)
        except WrongState as exc:
            assert not revivable, f"retry of {job.state} job {job.id} refused: {exc.message}"
            return
        assert revivable, f"retry of job {job.id} ({self._describe(job.id)}) accepted: {got}"
        self.h.seen[f"retry of a {job.state} job"] += 1
        job.state = "waiting" if self._pending(job) else "queued"
        assert (got.queued, got.waiting) == (([job.id], []) if job.state == "queued" else ([], [job.id]))
        job.attempt, job.worker, job.cancel_requested, job.due, job.result, job.progress = (
            0,
            None,
            False,
            True,
            None,
            None,
        )

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        repository.set_queue_paused(self.h.conn, queue, paused)
        self.queues[queue].paused = paused

    @rule(
        queue=st.sampled_from(QUEUES),
        max_running=st.sampled_from([None, None, 1, 3]),
        group_concurrency=st.sampled_from([None, 1, 2]),
    )
    def set_concurrency(self, queue: str, max_running: int | None, group_concurrency: int | None) -> None:
        repository.set_queue_concurrency(
            self.h.conn, queue, max_running=max_running, group_concurrency=group_concurrency
        )
        self.queues[queue].max_running = max_running
        self.queues[queue].group_concurrency = group_concurrency

    @rule(queue=st.sampled_from(QUEUES))
    def count_floor_moves(self, queue: str) -> None:
        """The floor of a limited queue's count moves up to now, as a claim's count moves it once its walk got
        long (docs/protocol.md, "Where the count starts reading"; here, at any step): the runs started before it
        are looked up by id from then on, the later ones walked."""
        self.h.conn.run(
            "WITH t AS (SELECT clock_timestamp() AS at)"
            " UPDATE sched_queues SET running_floor = t.at, running_below = ARRAY("
            "SELECT id FROM sched_jobs WHERE state = 'running' AND queue = %(queue)s AND started_at < t.at)"
            " FROM t WHERE queue = %(queue)s",
            {"queue": queue},
        )

    @initialize(rate=st.sampled_from([None, *RATES]), burst=st.sampled_from([1, 2]))
    def start_with_a_group_rate(self, rate: float | None, burst: int) -> None:
        """Most examples start with group rates on q2, so that claims meet them from the first step."""
        self.set_group_rate("q2", rate, burst)

    @rule(queue=st.sampled_from(QUEUES), rate=st.sampled_from([None, *RATES]), burst=st.sampled_from([1, 2]))
    def set_group_rate(self, queue: str, rate: float | None, burst: int) -> None:
        start = time.monotonic()
        repository.set_queue_group_rate(self.h.conn, queue, rate, burst)
        end = time.monotonic()
        # Every group's bucket starts full.
        control = self.queues[queue]
        control.group_rate = None if rate is None else (rate, float(burst))
        control.group_buckets, control.group_rate_since = {}, (start, end)

    @rule(
        queue=st.sampled_from(QUEUES),
        rate=st.sampled_from([None, None, *RATES]),
        burst=st.sampled_from([1.0, 2.0, 3.5]),
    )
    def set_rate(self, queue: str, rate: float | None, burst: float) -> None:
        start = time.monotonic()
        repository.set_queue_rate(self.h.conn, queue, rate, burst)
        end = time.monotonic()
        # A new or changed bucket starts full.
        self.queues[queue].bucket = None if rate is None else Bucket(rate, burst, burst, burst, start, end)

    @precondition(
        lambda self: (
            any(c.bucket is not None and not c.paused for c in self.queues.values())
            and any(w.registered for w in self.workers.values())
        )
    )
    @rule(w=st.integers(0, 2), pick=st.integers(0, 1), limit=st.integers(1, 4))
    def claim_while_pausing(self, w: int, pick: int, limit: int) -> None:
        """An operator pauses a rate-limited queue while a claim waits for its bucket: the claim either ran
        before the pause (within its bucket) or sees the pause and takes nothing."""
        queues = [q for q, c in self.queues.items() if c.bucket is not None and not c.paused]
        queue = queues[pick % len(queues)]
        worker = self._worker(w)
        if not worker.registered:
            worker = next(x for x in self.workers.values() if x.registered)
        claimable = self._claimable(queue, list(TASKS))

        async def race() -> list:
            pauser = self.h.pauser
            await pauser.execute("BEGIN")
            try:
                await pauser.execute("UPDATE sched_queues SET paused = true WHERE queue = %s", (queue,))
                conn = self.h.worker_conns[worker.id]
                claiming = asyncio.ensure_future(repository.claim_jobs(conn, worker.id, queue, list(TASKS), limit))
                deadline = time.monotonic() + 0.5
                while not claiming.done() and time.monotonic() < deadline:
                    cur = await pauser.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                    if (await cur.fetchone())[0]:  # type: ignore[index]
                        self.h.seen["claim waited for the queue row a pause held"] += 1
                        break
                    await asyncio.sleep(0.005)
                await pauser.execute("COMMIT")
            except BaseException:
                await pauser.execute("ROLLBACK")
                raise
            return await claiming

        start = time.monotonic()
        claimed = self.h.run(race())
        end = time.monotonic()
        self.h.seen[f"claim raced a pause: took {len(claimed)}"] += 1
        self._check_claim(queue, claimable, claimed, limit, start, end, raced_pause=True)
        self._take(worker, claimed)
        self.queues[queue].paused = True

    @rule(batch=st.integers(1, 5))
    def cleanup(self, batch: int) -> None:
        # A failed or cancelled job stays while a job depends on it (its retry must still wait for it). Succeeded
        # jobs are in the history, which cleanup empties a slot at a time (cleanup_history).
        parents = {p for j in self.jobs.values() for p in j.parents}
        finished = {i for i, j in self.jobs.items() if j.state in ("failed", "cancelled") and i not in parents}
        counts = repository.delete_finished_batch(self.h.conn, 0.0, batch)
        assert counts.total == min(batch, len(finished)), f"cleanup deleted {counts}, {len(finished)} deletable"
        left = {r[0] for r in self.h.conn.rows("SELECT id FROM sched_jobs_all")}
        gone = set(self.jobs) - left
        assert gone <= finished, f"cleanup deleted jobs it must keep {sorted(gone - finished)}"
        if any(self.jobs[i].state in ("failed", "cancelled") and i in parents for i in self.jobs):
            self.h.seen["cleanup kept a failed or cancelled parent"] += 1
        assert len(gone) == counts.total
        for job_id in gone:
            del self.jobs[job_id]
        for job in self.jobs.values():
            job.parents &= left

    @rule()
    def cleanup_history(self) -> None:
        """Cleanup with a retention of nothing: the slot taking new rows moves on, and every other slot is emptied
        with its jobs' edges: every succeeded job goes, nothing else."""
        succeeded = {i for i, j in self.jobs.items() if j.state == "succeeded"}
        emptied, held = admin.empty_history_slots(self.h.conn, 0.0)
        assert held == len(succeeded), f"emptied {emptied} holding {held} jobs, {len(succeeded)} succeeded"
        if held:
            self.h.seen["cleanup emptied a history slot"] += 1
        left = {r[0] for r in self.h.conn.rows("SELECT id FROM sched_jobs_all")}
        assert set(self.jobs) - left == succeeded
        edges = self.h.conn.rows(
            "SELECT count(*) FROM sched_job_deps WHERE job_id <> ALL(%(left)s) OR depends_on <> ALL(%(left)s)",
            {"left": sorted(left)},
        )
        assert edges == [(0,)], "edges of deleted jobs left behind"
        for job_id in succeeded:
            del self.jobs[job_id]
        for job in self.jobs.values():
            job.parents &= left

    @rule(full=st.booleans())
    def promote_due(self, full: bool) -> None:
        """A worker's promotion of due deferred jobs: from its positions, or a full pass, after which no due job
        is left deferred (nothing else holds a row between steps)."""
        if full:
            self.due_marks._next_full = 0.0
        assert self.h.run(repository.promote_due(self.h.reaper, marks=self.due_marks)) >= 0
        if full:
            (left,) = self.h.conn.row(
                "SELECT count(*) FROM sched_jobs_all WHERE state = 'queued' AND deferred AND run_at <= now()"
            )
            assert left == 0, f"{left} due deferred job(s) left after a full promotion pass"

    @rule(pick=st.integers(0, 10**6), seconds=st.sampled_from([0.001, 0.01, 1.0, 60.0]))
    def commit_late(self, pick: int, seconds: float) -> None:
        """A ready job's run_at moves back, as if the producer's transaction had begun that long before it
        committed: it may now lie before where a worker's claims read its level or its group."""
        job = self._job(pick, ("queued",))
        if job is None or not job.due:
            return
        self.h.conn.run(
            "UPDATE sched_jobs SET run_at = run_at - make_interval(secs => %s) WHERE id = %s AND NOT deferred",
            (seconds, job.id),
        )

    @precondition(lambda self: any(not j.due and j.state in ("waiting", "queued") for j in self.jobs.values()))
    @rule(pick=st.integers(0, 10**6))
    def time_passes(self, pick: int) -> None:
        """A delayed job or a backed-off retry falls due."""
        ids = sorted(i for i, j in self.jobs.items() if not j.due and j.state in ("waiting", "queued"))
        job = self.jobs[ids[pick % len(ids)]]
        self.h.conn.run("UPDATE sched_jobs SET run_at = now() - interval '1 second' WHERE id = %s", (job.id,))
        job.due = True

    # --- invariants ---------------------------------------------------------------------------------------

    def _describe(self, job_id: int) -> str:
        job = self.jobs.get(job_id)
        return "deleted" if job is None else f"model {job}, database {self._row(job_id)}"

    @invariant()
    def database_matches_model(self) -> None:
        rows = self.h.conn.rows(
            "SELECT id, queue, task, state::text, attempt, max_attempts, lease, worker_id::text, dedupe_key,"
            " pending_deps, cancel_requested_at IS NOT NULL, result, progress, run_at <= now(), priority,"
            " finished_at IS NOT NULL FROM sched_jobs_all ORDER BY id"
        )
        assert [r[0] for r in rows] == sorted(self.jobs), "jobs in the database differ from the model's"
        for (
            job_id,
            queue,
            task,
            state,
            attempt,
            max_attempts,
            lease,
            worker,
            key,
            pending,
            cancel_requested,
            result,
            progress,
            due,
            priority,
            finished,
        ) in rows:
            job = self.jobs[job_id]
            seen = (queue, task, state, attempt, max_attempts, key, priority)
            wanted = (job.queue, job.task, job.state, job.attempt, job.max_attempts, job.key, job.priority)
            assert seen == wanted, f"job {job_id}: database {seen}, model {wanted}"
            assert attempt <= max_attempts, f"job {job_id} ran {attempt} times, budget {max_attempts}"
            assert finished == (state in TERMINAL), f"{state} job {job_id}: finished_at set {finished}"
            if state == "running":
                assert (lease, worker) == (job.lease, job.worker), f"job {job_id} runs under another lease"
                assert cancel_requested == job.cancel_requested, f"job {job_id}: cancel request lost or invented"
                assert progress == job.progress, f"job {job_id}: progress {progress}, model {job.progress}"
            if state == "waiting":
                assert pending == self._pending(job) > 0, f"waiting job {job_id}: pending_deps {pending}"
            if state in ("waiting", "queued"):
                assert not cancel_requested, f"{state} job {job_id} still carries a cancel request"
                assert due == job.due, f"job {job_id}: due {due}, model {job.due}"
            if state == "succeeded":
                assert result == job.result, f"job {job_id} succeeded with {result}, from a run that lost it"
            if state in ("queued", "running", "succeeded"):
                # No dependent starts before all its parents succeeded.
                for parent in job.parents:
                    assert self.jobs[parent].state == "succeeded", f"job {job_id} {state} before parent {parent}"
        edges = {(a, b) for a, b in self.h.conn.rows("SELECT job_id, depends_on FROM sched_job_deps")}
        assert edges == {(j.id, p) for j in self.jobs.values() for p in j.parents}

    @invariant()
    def counts_see_every_run(self) -> None:
        """What the count of a claim of a limited queue reads, from the queue's floor or (a full pass) from the
        beginning, is the queue's running jobs by group (its own moves of the floor rolled back)."""
        for queue, control in self.queues.items():
            if control.max_running is None and control.group_concurrency is None:
                continue
            running = collections.Counter(
                j.group for j in self.jobs.values() if j.state == "running" and j.queue == queue
            )
            for full in (False, True):
                self.h.conn.raw.execute("BEGIN")
                try:
                    rows = self.h.conn.rows(
                        "SELECT group_name, n FROM sched_queue_running(%s, %s, clock_timestamp())", (queue, full)
                    )
                finally:
                    self.h.conn.raw.execute("ROLLBACK")
                assert dict(rows) == running, f"the count of {queue} (full pass: {full}) reads {rows}, not {running}"
            (below,) = self.h.conn.row(
                "SELECT count(*) FROM sched_queues q JOIN sched_jobs j ON j.id = ANY(q.running_below)"
                " WHERE q.queue = %s AND j.state = 'running' AND j.started_at < q.running_floor",
                (queue,),
            )
            self.h.seen["count of a limited queue read runs below its floor"] += below > 0

    @invariant()
    def one_live_job_per_key(self) -> None:
        self.h.seen["steps checked"] += 1
        twice = self.h.conn.rows(
            "SELECT queue, dedupe_key, count(*) FROM sched_jobs_all WHERE dedupe_key IS NOT NULL"
            " AND state IN ('waiting', 'queued', 'running') GROUP BY 1, 2 HAVING count(*) > 1"
        )
        assert twice == [], f"several live jobs hold one key: {twice}"

    @invariant()
    def workers_see_their_runs(self) -> None:
        for worker in self.workers.values():
            conn = self.h.worker_conns[worker.id]
            mine = [j for j in self.jobs.values() if j.state == "running" and j.worker == worker.id]
            running = self.h.run(repository.running_for_worker(conn, worker.id))
            assert sorted(running) == sorted((j.id, j.lease) for j in mine)
            asked = self.h.run(repository.cancel_requested(conn, worker.id))
            assert asked == {j.lease for j in mine if j.cancel_requested}
        rows = self.h.conn.rows("SELECT id::text FROM sched_workers")
        assert {r[0] for r in rows} == {w.id for w in self.workers.values() if w.registered}


# Finding a failure is quick; shrinking it to a short sequence of steps replays many sequences and may take
# minutes (SCHED_MODEL_SHRINK=0 skips it).
@pytest.mark.timeout(900)
def test_the_protocol_keeps_its_invariants_under_any_sequence_of_steps(harness: Harness) -> None:
    class Machine(ProtocolModel):
        h = harness

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            phases=PHASES,
        ),
    )
    print("\n".join(f"{count:6d}  {what}" for what, count in sorted(harness.seen.items())))


def test_a_claim_from_positions_may_pass_a_job_before_its_groups_position(harness: Harness) -> None:
    """The case of _skipped_by that random steps seldom reach: a job that the claim's segments of the ready index
    cover but that lies before where the worker reads its group. A fair claim takes a later job of that group in
    the group's turn and passes it over; the worker's probe moves the group's position back to it, and the next
    claim takes it. Without that case in _skipped_by, _check_order_in_groups fails here."""

    class Machine(ProtocolModel):
        h = harness

    model = Machine()
    spec = {"task": "t", "queue": "q1", "max_attempts": 1}
    model.enqueue_many([NewJob(group="g1", **spec) for _ in range(4)])  # a1..a4
    model.enqueue_many([NewJob(group="g2", **spec) for _ in range(3)])  # b1..b3, added after
    a1, a2, a3, _, b1, b2, b3 = sorted(model.jobs)
    model.claim(0, "q1", ["t"], 2)  # the full pass: g1 and g2 take a turn each
    assert {j for j, job in model.jobs.items() if job.state == "running"} == {a1, b1}
    # b2 commits late: its run_at moves just before b1's, where the worker reads g2 from (b1); the worker reads
    # the level from a1 (a2, which the claim read and left, holds the level back), so the level covers b2.
    harness.conn.run(
        "UPDATE sched_jobs SET run_at = (SELECT run_at FROM sched_jobs WHERE id = %s) - interval '1 microsecond'"
        " WHERE id = %s",
        (b1, b2),
    )
    model.claim(0, "q1", ["t"], 2)  # from positions: g1's turn takes a2, g2's takes b3 and passes b2 over
    assert {j for j, job in model.jobs.items() if job.state == "running"} == {a1, b1, a2, b3}
    assert harness.seen["claim from marks may pass a job before its group's position"] >= 1
    model.probe_ready(0, "q1")
    assert harness.seen["probe moved a position back"] == 1
    model.claim(0, "q1", ["t"], 2)
    assert {a3, b2} <= {j for j, job in model.jobs.items() if job.state == "running"}
    model.database_matches_model()
    model.teardown()
