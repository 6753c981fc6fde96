"""Every job-state operation, one function per named query in ``sql/queries.sql``. No SQL is built here:
functions pick a query by name, pass parameters, and shape the rows. No loops over time, no sleeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from typing import TYPE_CHECKING, Any

from pgsched.db import AsyncConnection, Connection
from pgsched.errors import InvalidInput, KeyTaken, NotFound, QueueFull, WrongState
from pgsched.models import ClaimedJob, Enqueued, JobState, NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query

if TYPE_CHECKING:
    from pgsched.schedules import ScheduleSpec

# The NOTIFY channels of sql/queries.sql: new work per queue, and cancellation requests per job.
WAKEUP_CHANNEL = "sched_wakeup"
CANCEL_CHANNEL = "sched_cancel"


# --- producers -------------------------------------------------------------------------------------------


def enqueue(conn: Connection, job: NewJob) -> Enqueued:
    """Insert one job (or find the live job with its key), refusing missing or failed dependencies and
    respecting the queue's backlog cap."""
    params = {
        "queue": job.queue,
        "task": job.task,
        "payload": job.payload_json,
        "priority": job.priority,
        "run_at": job.run_at,
        "delay_s": job.delay_s,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "key": job.key,
        "pending_deps": 0,
        "admitted": False,
    }
    if not job.after:
        # The common add: one statement, no transaction of its own; leaner still for a job due now with no key.
        now = job.key is None and job.run_at is None and not job.delay_s
        row = conn.row(query("JobInsertNow" if now else "JobInsert"), params)
        if row is not None:
            return Enqueued(row[0])
    with conn.transaction():
        _admit(conn, job.queue, 1)
        params["admitted"] = True
        params["pending_deps"] = _lock_dependencies(conn, job.after) if job.after else 0
        # A duplicate key can finish between our skipped insert and the look-up; then insert again.
        while True:
            row = conn.row(query("JobInsert"), params)
            if row is not None:
                new_id = row[0]
                break
            existing = conn.row(query("JobGetLiveByKey"), {"queue": job.queue, "key": job.key})
            if existing is not None:
                return Enqueued(existing[0], deduplicated=True)
        if job.after:
            conn.run(query("JobDependencyInsertMany"), {"job_id": new_id, "depends_on": sorted(set(job.after))})
        return Enqueued(new_id)


def _lock_dependencies(conn: Connection, after: Sequence[int]) -> int:
    """Lock the jobs ``after`` names and return how many have not succeeded yet (DESIGN §9)."""
    wanted = sorted(set(after))
    states = dict(conn.rows(query("JobLockDependencies"), {"ids": wanted}))
    missing = [job_id for job_id in wanted if job_id not in states]
    if missing:
        raise InvalidInput(f"--after {missing[0]}: no such job")
    for job_id in wanted:
        if states[job_id] in ("failed", "cancelled"):
            raise InvalidInput(f"--after {job_id}: that job {states[job_id]}, so this one could never run")
    return sum(1 for job_id in wanted if states[job_id] != "succeeded")


_COPY_TYPES = ["bigint", "text", "text", "jsonb", "integer", "timestamptz", "integer", "interval", "boolean"]


def enqueue_many(conn: Connection, jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert many jobs in one transaction through binary COPY; all or nothing, in order.

    Jobs with keys are staged first so a live duplicate (or an earlier line with the same key) is skipped
    and reported as deduplicated. Dependencies are not supported in bulk."""
    if not jobs:
        return []
    if any(job.after for job in jobs):
        raise InvalidInput("dependencies (--after) cannot be used with bulk inserts")
    with conn.transaction():
        for queue, count in sorted(Counter(job.queue for job in jobs).items()):
            _admit(conn, queue, count)
        ids, now = conn.row(query("JobIdReserveMany"), {"count": len(jobs)})  # type: ignore[misc]
        rows = (_copy_row(new_id, job, now) for new_id, job in zip(ids, jobs, strict=True))
        if any(job.key for job in jobs):
            result = _enqueue_keyed(conn, jobs, ids, rows)
        else:
            if all(_uses_table_defaults(job) for job in jobs):
                plain = ((i, job.queue, job.task, job.payload_json) for i, job in zip(ids, jobs, strict=True))
                conn.copy_rows(query("JobCopyInPlain"), _COPY_TYPES[:4], plain)
            else:
                conn.copy_rows(query("JobCopyIn"), _COPY_TYPES, rows)
            result = _all_new(ids)
        conn.rows(query("QueueNotifyMany"), {"queues": sorted({job.queue for job in jobs})})
        return result


def _all_new(ids: list[int]) -> list[Enqueued]:
    # tuple.__new__ straight from map(): half the cost of calling Enqueued() once per job from Python.
    return list(map(tuple.__new__, repeat(Enqueued), zip(ids, repeat(False))))


def _copy_row(new_id: int, job: NewJob, now: datetime) -> tuple:
    """One job as the columns of JobCopyIn; relative delays count from the server's clock."""
    run_at = job.run_at or (now + timedelta(seconds=job.delay_s) if job.delay_s else now)
    return (
        new_id,
        job.queue,
        job.task,
        job.payload_json,
        job.priority,
        run_at,
        job.max_attempts,
        timedelta(seconds=job.timeout_s),
        run_at > now,
    )


def _uses_table_defaults(job: NewJob) -> bool:
    # Mirrors the column defaults in sql/0001_jobs.sql.
    return (
        job.priority == 0
        and job.run_at is None
        and not job.delay_s
        and job.max_attempts == 3
        and job.timeout_s == 300.0
    )


def _enqueue_keyed(conn: Connection, jobs: Sequence[NewJob], ids: list[int], rows: Iterator) -> list[Enqueued]:
    conn.run(query("JobIncomingCreate"))
    keyed_rows = ((*row, job.key) for row, job in zip(rows, jobs, strict=True))
    conn.copy_rows(query("JobIncomingCopyIn"), [*_COPY_TYPES, "text"], keyed_rows)
    key_of = {new_id: (job.queue, job.key) for new_id, job in zip(ids, jobs, strict=True)}
    inserted: set[int] = set()
    holders: dict[tuple[str, str], int] = {}
    pending = ids
    # A job holding a key can finish between the skipped insert and the look-up of holders: its key is free
    # then, so the staged job is inserted in the next round instead of being reported as a duplicate of nothing.
    while pending:
        inserted.update(r[0] for r in conn.rows(query("JobInsertFromIncoming"), {"ids": pending}))
        skipped = [new_id for new_id in pending if new_id not in inserted]
        if skipped:
            found = conn.rows(
                query("JobGetLiveByKeys"),
                {"queues": [key_of[i][0] for i in skipped], "keys": [key_of[i][1] for i in skipped]},
            )
            holders.update(((q, k), job_id) for q, k, job_id in found)
        pending = [new_id for new_id in skipped if key_of[new_id] not in holders]
    # Dropped now rather than at commit: a caller's transaction may add another keyed batch.
    conn.run(query("JobIncomingDrop"))
    return [
        Enqueued(new_id) if new_id in inserted else Enqueued(holders[key_of[new_id]], deduplicated=True)
        for new_id in ids
    ]


# --- reading ---------------------------------------------------------------------------------------------

_JOB_FIELDS = (
    "id queue task state attempt max_attempts priority run_at created_at started_at finished_at payload result "
    "error progress depends_on timeout_s key worker_id pending_deps"
).split()


def get_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job's detail, or NotFound."""
    row = conn.row(query("JobGet"), {"id": job_id})
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return dict(zip(_JOB_FIELDS, row, strict=True))


_QUEUE_FIELDS = "queue waiting queued scheduled running succeeded failed cancelled oldest_ready_age_s".split()


def count_by_queue(conn: Connection, queue: str | None = None) -> list[dict[str, Any]]:
    """Per-queue job counts by state and the age of the oldest ready job."""
    return [dict(zip(_QUEUE_FIELDS, row, strict=True)) for row in conn.rows(query("JobCountByQueue"), {"queue": queue})]


_WORKER_FIELDS = "id host pid queues concurrency running heartbeat_age_s".split()


def list_workers(conn: Connection) -> list[dict[str, Any]]:
    """Registered workers and the age of their heartbeats."""
    return [
        {**dict(zip(_WORKER_FIELDS, row, strict=True)), "id": str(row[0])} for row in conn.rows(query("WorkerList"))
    ]


# --- cleanup ---------------------------------------------------------------------------------------------


@dataclass
class CleanupCounts:
    """How many terminal jobs a cleanup deleted (or would delete), by state."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.cancelled


def delete_finished_batch(conn: Connection, older_than_s: float, batch: int) -> CleanupCounts:
    """Delete one batch of terminal jobs whose finished_at is older than ``older_than_s``; autocommitted."""
    row = conn.row(query("JobDeleteFinished"), {"older_than": timedelta(seconds=older_than_s), "batch": batch})
    return CleanupCounts(*row) if row else CleanupCounts()


def count_finished(conn: Connection, older_than_s: float) -> CleanupCounts:
    """What ``delete_finished_batch`` would remove in total."""
    row = conn.row(query("JobCountFinished"), {"older_than": timedelta(seconds=older_than_s)})
    return CleanupCounts(*row) if row else CleanupCounts()


# --- workers ---------------------------------------------------------------------------------------------


async def skip_commit_flush_wait(conn: AsyncConnection) -> None:
    """Let this session's commits return before the WAL flush (for replayable worker writes only)."""
    await conn.rows(query("SessionCommitWithoutFlushWait"))


async def register_worker(
    conn: AsyncConnection,
    worker_id: str,
    host: str,
    pid: int,
    queues: list[str],
    tasks: list[str],
    concurrency: int,
    *,
    stale_after_s: float,
    timeout_grace_s: float,
) -> None:
    """Add the worker's row with the liveness contract it will be judged by; it must exist before it claims."""
    await conn.rows(
        query("WorkerRegister"),
        {
            "id": worker_id,
            "host": host,
            "pid": pid,
            "queues": queues,
            "tasks": tasks,
            "concurrency": concurrency,
            "stale_after_s": stale_after_s,
            "timeout_grace_s": timeout_grace_s,
        },
    )


async def heartbeat_worker(conn: AsyncConnection, worker_id: str, running: int) -> bool:
    """Beat; False means the worker's row is gone (it was reaped) and it must re-register."""
    return bool(await conn.rows(query("WorkerHeartbeat"), {"id": worker_id, "running": running}))


async def deregister_worker(conn: AsyncConnection, worker_id: str) -> None:
    """Remove the worker's row on a clean exit."""
    await conn.rows(query("WorkerDeregister"), {"id": worker_id})


async def claim_jobs(
    conn: AsyncConnection, worker_id: str, queue: str, tasks: list[str], limit: int
) -> list[ClaimedJob]:
    """Claim up to ``limit`` ready jobs of ``queue`` whose task is in ``tasks``, each under a new lease
    (docs/protocol.md, "Claim")."""
    rows = await conn.rows(
        query("JobClaim"),
        {"queue": queue, "tasks": tasks, "limit": limit, "worker_id": worker_id},
        prepare=True,
    )
    return [ClaimedJob(r[0], r[1], r[2], r[3], r[4], r[5], queue, r[6]) for r in rows]


async def promote_due(conn: AsyncConnection, limit: int = 5000) -> int:
    """Move deferred jobs that fell due into the ready index (at most ``limit`` per queue); returns how many.
    The claim is correct without it; with it, the claim's sort of due rows stays small."""
    return await conn.run(query("JobPromoteDue"), {"limit": limit})


async def ready_depth(conn: AsyncConnection, queues: list[str]) -> list[tuple[str, int, float]]:
    """Ready jobs and the age of the oldest, per queue (read through the claim's partial index)."""
    found = []
    for queue in queues:
        row = await conn.row(query("QueueReadyDepth"), {"queue": queue})
        found.append((queue, row[0], row[1]) if row else (queue, 0, 0.0))
    return found


async def apply_task_limits(conn: AsyncConnection, worker_id: str, jobs: Sequence[ClaimedJob]) -> None:
    """Store the max_attempts/timeout a task declares on jobs just claimed, so the reaper uses them too."""
    await conn.rows(
        query("JobSetLimitsMany"),
        {
            "worker_id": worker_id,
            "ids": [j.id for j in jobs],
            "leases": [j.lease for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "timeouts": [j.timeout_s for j in jobs],
        },
    )


@dataclass
class RecordResult:
    """What a flush of outcomes changed: job ids written, job ids fenced off, and queues to wake."""

    written: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    retry_due: list[tuple[str, float]] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    wake_queues: set[str] = field(default_factory=set)


async def record_outcomes(conn: AsyncConnection, worker_id: str, outcomes: Sequence[Outcome]) -> RecordResult:
    """Write a batch of outcomes in one transaction, each fenced by its run's lease (docs/protocol.md, "Leases
    and fencing"), and settle the dependents of the jobs it finished. Replaying the same batch is harmless: a
    lease that no longer holds its job matches nothing."""
    by_kind: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    result = RecordResult()
    written: set[int] = set()  # leases
    settle: list[int] = []
    async with conn.transaction():
        if done := by_kind.get(OutcomeKind.SUCCEEDED):
            # Results arrive as JSON text; join them into one JSON object keyed by lease instead of re-encoding.
            with_result = [o for o in done if o.result is not None]
            rows = await conn.rows(
                query("JobSetSucceededMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in done],
                    "leases": [o.lease for o in done],
                    "results": "{" + ",".join(f'"{o.lease}":{o.result}' for o in with_result) + "}"
                    if with_result
                    else None,
                },
                # Planned with the arrays' values each time, so "= ANY(leases)" is a hash lookup; a prepared
                # generic plan would search the array for every row, quadratic in the batch.
                prepare=False,
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            settle.extend(r[1] for r in rows if r[2])
        if failed := by_kind.get(OutcomeKind.FAILED):
            rows = await conn.rows(
                query("JobSetFailedMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in failed],
                    "leases": [o.lease for o in failed],
                    "errors": [o.error or "failed" for o in failed],
                    "retryable": [o.retryable for o in failed],
                    "base": [o.backoff_base_s for o in failed],
                    "cap": [o.backoff_cap_s for o in failed],
                    "after": [o.retry_after_s for o in failed],
                },
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            result.retried.extend(r[1] for r in rows if r[2] == JobState.QUEUED)
            result.retry_due.extend((r[3], r[5]) for r in rows if r[2] == JobState.QUEUED)
            settle.extend(r[1] for r in rows if r[4] and r[2] != JobState.QUEUED)
        if cancelled := by_kind.get(OutcomeKind.CANCELLED):
            rows = await conn.rows(
                query("JobSetCancelledMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in cancelled],
                    "leases": [o.lease for o in cancelled],
                    "errors": [o.error or "cancelled" for o in cancelled],
                },
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            settle.extend(r[1] for r in rows if r[2])
        if released := by_kind.get(OutcomeKind.RELEASED):
            rows = await conn.rows(
                query("JobReleaseMany"),
                {"worker_id": worker_id, "ids": [o.job_id for o in released], "leases": [o.lease for o in released]},
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            result.wake_queues.update(r[2] for r in rows if r[3] == JobState.QUEUED)
            # A release of a job whose cancel was requested cancelled it: its dependents follow.
            settle.extend(r[1] for r in rows if r[3] == JobState.CANCELLED and r[4])
        # Only jobs that gained dependents need the second statement; most batches skip it.
        if settle:
            result.wake_queues.update(await _settle_dependents(conn, settle))
        if result.wake_queues:
            await conn.rows(query("QueueNotifyMany"), {"queues": sorted(result.wake_queues)})
    result.fenced = [o.job_id for o in outcomes if o.lease not in written]
    return result


async def _settle_dependents(conn: AsyncConnection, finished_ids: list[int]) -> list[str]:
    row = await conn.row(query("JobSettleDependents"), {"ids": finished_ids})
    return list(row[2] or []) if row else []


# --- reaping ---------------------------------------------------------------------------------------------


@dataclass
class ReapResult:
    """What a reap did; ``ran`` is False when another reaper held the lock."""

    ran: bool = True
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    workers_removed: int = 0


async def reap_stale(conn: AsyncConnection, *, wait: bool = False) -> ReapResult:
    """Requeue or fail the jobs of dead workers and overdue runs, then forget dead workers; each worker is
    judged by the stale-after and timeout grace it registered (docs/protocol.md, "Reaper"). Only one reaper
    runs at a time: with ``wait`` False another's lock makes this a no-op."""
    async with conn.transaction():
        if wait:
            await conn.rows(query("JobReapLock"))
        else:
            locked = await conn.row(query("JobReapLockTry"))
            if not (locked and locked[0]):
                return ReapResult(ran=False)
        rows = sorted(await conn.rows(query("JobReap")))
        result = ReapResult(
            requeued=[r[0] for r in rows if r[1] == JobState.QUEUED],
            failed=[r[0] for r in rows if r[1] == JobState.FAILED],
            cancelled=[r[0] for r in rows if r[1] == JobState.CANCELLED],
        )
        queues = {r[2] for r in rows if r[1] == JobState.QUEUED}
        if result.failed or result.cancelled:
            queues.update(await _settle_dependents(conn, result.failed + result.cancelled))
        if queues:
            await conn.rows(query("QueueNotifyMany"), {"queues": sorted(queues)})
        result.workers_removed = len(await conn.rows(query("WorkerDeleteStale")))
    return result


async def set_progress(conn: AsyncConnection, worker_id: str, job_id: int, lease: int, progress_json: str) -> bool:
    """Store a running job's progress; False when the run's lease no longer holds the job."""
    rows = await conn.rows(
        query("JobSetProgress"), {"id": job_id, "worker_id": worker_id, "lease": lease, "progress": progress_json}
    )
    return bool(rows)


async def running_for_worker(conn: AsyncConnection, worker_id: str) -> list[tuple[int, int]]:
    """(job id, lease) of every job the database has running for this worker."""
    return [(r[0], r[1]) for r in await conn.rows(query("JobListRunningForWorker"), {"worker_id": worker_id})]


async def cancel_requested(conn: AsyncConnection, worker_id: str) -> set[int]:
    """The leases of this worker's running jobs whose cancellation was requested."""
    return {r[0] for r in await conn.rows(query("JobListCancelRequested"), {"worker_id": worker_id})}


# --- queue controls --------------------------------------------------------------------------------------


def _admit(conn: Connection, queue: str, count: int) -> None:
    """Refuse ``count`` new jobs on ``queue`` when that would pass its max backlog; call inside the insert's
    transaction, which then holds the capped queue's row until it commits, so concurrent adds take turns."""
    row = conn.row(query("QueueAdmitLock"), {"queue": queue})
    if row is None:
        return
    max_backlog = row[0]
    queued = conn.row(query("QueueCountQueued"), {"queue": queue})[0]  # type: ignore[index]
    if queued >= max_backlog:
        raise QueueFull(f"queue {queue} is full ({queued} jobs)")
    if queued + count > max_backlog:
        raise QueueFull(f"queue {queue} has room for {max_backlog - queued} more jobs, not {count}")


def set_queue_paused(conn: Connection, queue: str, paused: bool) -> None:
    """Pause or resume ``queue`` for every worker."""
    with conn.transaction():
        conn.run(query("QueueSetPaused"), {"queue": queue, "paused": paused})
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


def set_queue_rate(conn: Connection, queue: str, rate: float | None, burst: float | None = None) -> None:
    """Limit ``queue`` to ``rate`` jobs per second across all workers (bursts up to ``burst``); None removes it."""
    if rate is not None and burst is None:
        burst = max(1.0, rate)
    with conn.transaction():
        conn.run(query("QueueSetRate"), {"queue": queue, "rate": rate, "burst": burst if rate is not None else None})
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


def set_queue_max_backlog(conn: Connection, queue: str, max_backlog: int | None) -> None:
    """Refuse adds to ``queue`` while it holds ``max_backlog`` queued jobs; None removes the cap."""
    with conn.transaction():
        conn.run(query("QueueSetMaxBacklog"), {"queue": queue, "max_backlog": max_backlog})
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


_QUEUE_SETTINGS_FIELDS = "queue paused rate burst tokens max_backlog queued running".split()


def list_queues(conn: Connection) -> list[dict[str, Any]]:
    """Queues with jobs or settings: paused, rate, burst, current tokens, max backlog, queued and running."""
    return [dict(zip(_QUEUE_SETTINGS_FIELDS, row, strict=True)) for row in conn.rows(query("QueueList"))]


# --- schedules -------------------------------------------------------------------------------------------


def upsert_schedule(conn: Connection, spec: ScheduleSpec) -> bool:
    """Create or replace an operator's schedule; True if it is new. Its first run is the next tick after the
    database's clock (never the caller's, which may lag behind and leave the schedule before its last tick)."""
    from pgsched.schedules import next_tick

    with conn.transaction():
        now = conn.row(query("ClockNow"))[0]  # type: ignore[index]
        row = conn.row(
            query("ScheduleUpsert"),
            {
                "name": spec.name,
                "cron": spec.cron,
                "tz": spec.tz,
                "task": spec.task,
                "queue": spec.queue,
                "payload": spec.payload_json,
                "catch_up": spec.catch_up,
                "next_run_at": next_tick(spec.cron, spec.tz, now),
            },
        )
    return bool(row and row[0])


_SCHEDULE_FIELDS = "name cron tz task queue payload catch_up source next_run_at last_tick created_at".split()


def list_schedules(conn: Connection) -> list[dict[str, Any]]:
    """Every schedule with its next run and the last tick it fired."""
    return [dict(zip(_SCHEDULE_FIELDS, row, strict=True)) for row in conn.rows(query("ScheduleList"))]


def delete_schedule(conn: Connection, name: str) -> None:
    """Remove a schedule, or raise NotFound."""
    if not conn.rows(query("ScheduleDelete"), {"name": name}):
        raise NotFound(f"schedule {name} not found")


async def upsert_code_schedules(conn: AsyncConnection, specs: Sequence[ScheduleSpec]) -> list[str]:
    """Record the schedules that handlers declare in code (``@task(..., cron=...)``); a worker calls this at
    start. Returns the names created or changed; an operator's schedule of the same name is left alone."""
    from pgsched.schedules import next_tick

    if not specs:
        return []
    now = (await conn.row(query("ClockNow")))[0]  # type: ignore[index]
    rows = await conn.rows(
        query("ScheduleUpsertCodeMany"),
        {
            "names": [s.name for s in specs],
            "crons": [s.cron for s in specs],
            "tzs": [s.tz for s in specs],
            "tasks": [s.task for s in specs],
            "queues": [s.queue for s in specs],
            "catch_ups": [s.catch_up for s in specs],
            "next_run_ats": [next_tick(s.cron, s.tz, now) for s in specs],
        },
    )
    return [r[0] for r in rows]


async def tick_schedules(conn: AsyncConnection, limit: int = 100) -> int:
    """Enqueue the due ticks of every schedule and advance them; returns the number of jobs enqueued.

    Safe to call from any number of workers at once: due schedules are locked with SKIP LOCKED, and the fire
    statement only matches a schedule still at the tick that was read, with ticks newer than its last."""
    from pgsched.schedules import due_ticks

    enqueued = 0
    async with conn.transaction():
        for name, cron, tz, catch_up, due_at, last_tick, now in await conn.rows(
            query("ScheduleListDue"), {"limit": limit}
        ):
            ticks, upcoming = due_ticks(cron, tz, catch_up, due_at, now, last_tick)
            row = await conn.row(
                query("ScheduleFire"),
                {"name": name, "due_at": due_at, "ticks": ticks, "next_run_at": upcoming},
            )
            enqueued += row[1] if row else 0
    return enqueued


# --- cancel and retry ------------------------------------------------------------------------------------


@dataclass
class CancelResult:
    """What a cancel did: ``state`` is "cancelled", or "running" when the request went to the job's worker."""

    id: int
    state: str
    dependents_cancelled: int = 0


def cancel_job(conn: Connection, job_id: int) -> CancelResult:
    """Cancel a waiting or queued job and, transitively, its dependents; ask the worker of a running job to
    stop it. A finished job raises WrongState, an unknown one NotFound."""
    with conn.transaction():
        row = conn.row(query("JobCancel"), {"id": job_id})
        if row is None:
            state = conn.row(query("JobGetState"), {"id": job_id})
            if state is None:
                raise NotFound(f"job {job_id} not found")
            raise WrongState(f"job {job_id} already {state[0]}; nothing to cancel")
        if row[0] == "running":
            conn.rows(query("JobNotifyCancel"), {"id": job_id})
            return CancelResult(job_id, "running")
        settled = conn.row(query("JobSettleDependents"), {"ids": [job_id]})
        return CancelResult(job_id, "cancelled", settled[0] if settled else 0)


@dataclass
class RetryResult:
    """What a retry did: jobs back in the queue, jobs waiting on live dependencies, and jobs it could not revive."""

    queued: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


def retry_jobs(conn: Connection, ids: Sequence[int]) -> RetryResult:
    """Give failed or cancelled jobs a fresh attempt budget, in one transaction, and wake workers.

    A job goes back to queued when all its dependencies succeeded, to waiting while some are still live; one
    with a failed or cancelled dependency (or whose dedupe key another live job holds) is refused. Jobs are
    revived in rounds, so a dependency retried in the same call counts as live for its dependents."""
    result = RetryResult()
    remaining = sorted(set(ids))
    with conn.transaction():
        if remaining:
            conn.rows(query("JobRetryLockDependencies"), {"ids": remaining})
        queues: set[str] = set()
        conflicts = 0
        while remaining:
            try:
                # A savepoint: a transaction adding the same key that commits while this statement waits for it
                # makes the statement fail; run it again, and its key check then sees that job and refuses.
                with conn.transaction():
                    rows = conn.rows(query("JobRetryMany"), {"ids": remaining})
            except KeyTaken:
                conflicts += 1
                if conflicts > 5:
                    raise
                continue
            if not rows:
                break
            for job_id, state, queue in rows:
                (result.queued if state == "queued" else result.waiting).append(job_id)
                queues.add(queue)
            done = {r[0] for r in rows}
            remaining = [i for i in remaining if i not in done]
        result.refused = remaining
        if result.queued:
            conn.rows(query("QueueNotifyMany"), {"queues": sorted(queues)})
    result.queued.sort()
    result.waiting.sort()
    return result


def retry_job(conn: Connection, job_id: int) -> RetryResult:
    """Retry one failed or cancelled job, or say precisely why it cannot be retried."""
    result = retry_jobs(conn, [job_id])
    if not result.refused:
        return result
    state = conn.row(query("JobGetState"), {"id": job_id})
    if state is None:
        raise NotFound(f"job {job_id} not found")
    if state[0] not in ("failed", "cancelled"):
        raise WrongState(f"job {job_id} is {state[0]}; only failed or cancelled jobs can be retried")
    for dep_id, dep_state in conn.rows(query("JobListDependencyStates"), {"id": job_id}):
        if dep_state in ("failed", "cancelled"):
            raise WrongState(f"job {job_id} depends on job {dep_id}, which {dep_state}; retry that one first")
    raise WrongState(f"job {job_id} has a dedupe key that a live job now holds")


def retry_matching(conn: Connection, states: Sequence[str], queue: str | None = None) -> RetryResult:
    """Retry every job in ``states`` (failed and/or cancelled), on ``queue`` or on all queues."""
    with conn.transaction():
        ids = [r[0] for r in conn.rows(query("JobListRetryable"), {"states": list(states), "queue": queue})]
        return retry_jobs(conn, ids)


# --- explaining a job ------------------------------------------------------------------------------------


def dependency_states(conn: Connection, job_id: int) -> list[tuple[int, str]]:
    """The jobs ``job_id`` depends on, with their states."""
    return [(r[0], r[1]) for r in conn.rows(query("JobListDependencyStates"), {"id": job_id})]


_FACT_FIELDS = "paused rate tokens queue_workers task_workers busy_slots slots ahead now".split()


def explain_facts(conn: Connection, job: dict[str, Any], stale_after_s: float) -> dict[str, Any]:
    """The facts that decide whether a ready job runs: queue settings, serving workers, their load, jobs ahead."""
    row = conn.row(
        query("JobExplainFacts"),
        {
            "id": job["id"],
            "queue": job["queue"],
            "task": job["task"],
            "priority": job["priority"],
            "run_at": job["run_at"],
            "stale_after": timedelta(seconds=stale_after_s),
        },
    )
    return dict(zip(_FACT_FIELDS, row, strict=True)) if row else {}


async def rate_limited_backlog(conn: AsyncConnection, queues: list[str], tasks: list[str]) -> bool:
    """Whether ready jobs of these queues and tasks are held back only by a rate limit (not by a pause)."""
    row = await conn.row(query("QueueRateLimitedBacklog"), {"queues": queues, "tasks": tasks})
    return bool(row and row[0])
