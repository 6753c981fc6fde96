"""Every job-state operation, one function per named query in ``sql/queries.sql``. No SQL is built here:
functions pick a query by name, pass parameters, and shape the rows. No loops over time, no sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pgsched.db import AsyncConnection, Connection
from pgsched.errors import InvalidInput, NotFound
from pgsched.models import ClaimedJob, Enqueued, NewJob, Outcome
from pgsched.sqlfiles import query

WAKEUP_CHANNEL = "sched_wakeup"


# --- producers -------------------------------------------------------------------------------------------


def enqueue(conn: Connection, job: NewJob) -> Enqueued:
    """Insert one job (or find the live job with its key), refusing missing or failed dependencies."""
    with conn.transaction():
        pending = _lock_dependencies(conn, job.after) if job.after else 0
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
            "pending_deps": pending,
        }
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


_COPY_TYPES = ["bigint", "text", "text", "jsonb", "integer", "timestamptz", "integer", "interval"]


def enqueue_many(conn: Connection, jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert many jobs in one transaction through binary COPY; all or nothing, in order.

    Jobs with keys are staged first so a live duplicate (or an earlier line with the same key) is skipped
    and reported as deduplicated. Dependencies are not supported in bulk."""
    if not jobs:
        return []
    if any(job.after for job in jobs):
        raise InvalidInput("dependencies (--after) cannot be used with bulk inserts")
    with conn.transaction():
        reserved = conn.rows(query("JobIdReserveMany"), {"count": len(jobs)})
        now = reserved[0][1]
        ids = [row[0] for row in reserved]
        rows = (
            (
                new_id,
                job.queue,
                job.task,
                job.payload_json,
                job.priority,
                job.run_at or (now + timedelta(seconds=job.delay_s) if job.delay_s else now),
                job.max_attempts,
                timedelta(seconds=job.timeout_s),
            )
            for new_id, job in zip(ids, jobs, strict=True)
        )
        if any(job.key for job in jobs):
            result = _enqueue_keyed(conn, jobs, ids, rows)
        else:
            conn.copy_rows(query("JobCopyIn"), _COPY_TYPES, rows)
            result = [Enqueued(new_id) for new_id in ids]
        conn.rows(query("QueueNotifyMany"), {"queues": sorted({job.queue for job in jobs})})
        return result


def _enqueue_keyed(conn: Connection, jobs: Sequence[NewJob], ids: list[int], rows: Iterator) -> list[Enqueued]:
    conn.run(query("JobIncomingCreate"))
    keyed_rows = ((*row, job.key) for row, job in zip(rows, jobs, strict=True))
    conn.copy_rows(query("JobIncomingCopyIn"), [*_COPY_TYPES, "text"], keyed_rows)
    inserted = {row[0] for row in conn.rows(query("JobInsertFromIncoming"))}
    skipped = [(job.queue, job.key) for new_id, job in zip(ids, jobs, strict=True) if new_id not in inserted]
    holders: dict[tuple[str, str], int] = {}
    if skipped:
        found = conn.rows(
            query("JobGetLiveByKeys"), {"queues": [q for q, _ in skipped], "keys": [k for _, k in skipped]}
        )
        holders = {(q, k): job_id for q, k, job_id in found}
    return [
        Enqueued(new_id) if new_id in inserted else Enqueued(holders[(job.queue, job.key)], deduplicated=True)
        for new_id, job in zip(ids, jobs, strict=True)
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


async def register_worker(
    conn: AsyncConnection, worker_id: str, host: str, pid: int, queues: list[str], tasks: list[str], concurrency: int
) -> None:
    """Add the worker's row; it must exist before the worker claims."""
    await conn.rows(
        query("WorkerRegister"),
        {"id": worker_id, "host": host, "pid": pid, "queues": queues, "tasks": tasks, "concurrency": concurrency},
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
    """Claim up to ``limit`` ready jobs of ``queue`` whose task is in ``tasks`` (DESIGN §1)."""
    rows = await conn.rows(
        query("JobClaim"),
        {"queue": queue, "tasks": tasks, "limit": limit, "worker_id": worker_id},
        prepare=True,
    )
    return [ClaimedJob(r[0], r[1], r[2], r[3], r[4], r[5], queue) for r in rows]


@dataclass
class RecordResult:
    """What a flush of outcomes changed: ids written, ids fenced off, and queues to wake."""

    written: list[int] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    wake_queues: set[str] = field(default_factory=set)


async def record_outcomes(conn: AsyncConnection, worker_id: str, outcomes: Sequence[Outcome]) -> RecordResult:
    """Write a batch of outcomes in one transaction, fenced on worker and attempt (DESIGN §2-4), and settle
    the dependents of the jobs it finished. Replaying the same batch is harmless."""
    by_kind: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    result = RecordResult()
    async with conn.transaction():
        if done := by_kind.get("succeeded"):
            results = [o.result for o in done]
            rows = await conn.rows(
                query("JobSetSucceededMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in done],
                    "attempts": [o.attempt for o in done],
                    "results": json.dumps(results) if any(r is not None for r in results) else None,
                },
                prepare=True,
            )
            result.written.extend(r[0] for r in rows)
        if failed := by_kind.get("failed"):
            rows = await conn.rows(
                query("JobSetFailedMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in failed],
                    "attempts": [o.attempt for o in failed],
                    "errors": [o.error or "failed" for o in failed],
                    "retryable": [o.retryable for o in failed],
                    "base": [o.backoff_base_s for o in failed],
                    "cap": [o.backoff_cap_s for o in failed],
                },
            )
            result.written.extend(r[0] for r in rows)
        if cancelled := by_kind.get("cancelled"):
            rows = await conn.rows(
                query("JobSetCancelledMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in cancelled],
                    "attempts": [o.attempt for o in cancelled],
                    "errors": [o.error or "cancelled" for o in cancelled],
                },
            )
            result.written.extend(r[0] for r in rows)
        if released := by_kind.get("released"):
            rows = await conn.rows(
                query("JobReleaseMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in released],
                    "attempts": [o.attempt for o in released],
                },
            )
            result.written.extend(r[0] for r in rows)
            result.wake_queues.update(r[1] for r in rows)
        if result.written:
            result.wake_queues.update(await _settle_dependents(conn, result.written))
            if result.wake_queues:
                await conn.rows(query("QueueNotifyMany"), {"queues": sorted(result.wake_queues)})
    written = set(result.written)
    result.fenced = [o.job_id for o in outcomes if o.job_id not in written]
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
    workers_removed: int = 0


async def reap_stale(conn: AsyncConnection, stale_after_s: float, grace_s: float, *, wait: bool = False) -> ReapResult:
    """Requeue or fail the jobs of dead workers and overdue runs, then forget dead workers (DESIGN §5).
    Only one reaper runs at a time: with ``wait`` False another's lock makes this a no-op."""
    params = {"stale_after": timedelta(seconds=stale_after_s), "grace": timedelta(seconds=grace_s)}
    async with conn.transaction():
        if wait:
            await conn.rows(query("JobReapLock"))
        else:
            locked = await conn.row(query("JobReapLockTry"))
            if not (locked and locked[0]):
                return ReapResult(ran=False)
        rows = await conn.rows(query("JobReap"), params)
        result = ReapResult(
            requeued=[r[0] for r in rows if r[1] == "queued"], failed=[r[0] for r in rows if r[1] == "failed"]
        )
        queues = {r[2] for r in rows if r[1] == "queued"}
        if result.failed:
            queues.update(await _settle_dependents(conn, result.failed))
        if queues:
            await conn.rows(query("QueueNotifyMany"), {"queues": sorted(queues)})
        result.workers_removed = len(await conn.rows(query("WorkerDeleteStale"), params))
    return result


async def set_progress(conn: AsyncConnection, worker_id: str, job_id: int, attempt: int, progress_json: str) -> bool:
    """Store a running job's progress; False when the attempt was fenced off."""
    rows = await conn.rows(
        query("JobSetProgress"), {"id": job_id, "worker_id": worker_id, "attempt": attempt, "progress": progress_json}
    )
    return bool(rows)


async def cancel_requested(conn: AsyncConnection, worker_id: str) -> set[int]:
    """Ids of this worker's running jobs whose cancellation was requested."""
    return {r[0] for r in await conn.rows(query("JobListCancelRequested"), {"worker_id": worker_id})}
