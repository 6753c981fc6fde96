"""The worker's side of the protocol: claims under a lease, outcomes fenced by it, progress, the reaper, and
due-job promotion (docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pgsched.db import AsyncConnection
from pgsched.models import ClaimedJob, JobState, Outcome, OutcomeKind
from pgsched.sqlfiles import query


async def set_commit_durability(conn: AsyncConnection, level: str) -> None:
    """Set this session's synchronous_commit: off, local, remote_write or on (see SCHED_WORKER_COMMIT)."""
    await conn.rows(query("SessionSetSynchronousCommit"), {"level": level})


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


async def skip_leases_ahead(conn: AsyncConnection) -> None:
    """On a claimer's new connection: move the lease sequence past any value a server crash may have taken back,
    so that a lease never repeats (docs/protocol.md, "Leases and fencing")."""
    await conn.rows(query("JobLeaseSkipAhead"))


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


async def held_back(conn: AsyncConnection, queues: list[str]) -> list[tuple[str, str, int]]:
    """Ready jobs held back by each limit, as (queue, control, count), for the queues that have limits
    (docs/protocol.md, "Concurrency limits" and "Group rates")."""
    found = []
    for queue in queues:
        row = await conn.row(query("QueueHeldBack"), {"queue": queue})
        if row is not None:
            found += [
                (queue, "max_running", row[0]),
                (queue, "group_concurrency", row[1]),
                (queue, "group_rate", row[2]),
            ]
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


async def rate_limited_backlog(conn: AsyncConnection, queues: list[str], tasks: list[str]) -> bool:
    """Whether ready jobs of these queues and tasks are held back only by a rate limit (not by a pause)."""
    row = await conn.row(query("QueueRateLimitedBacklog"), {"queues": queues, "tasks": tasks})
    return bool(row and row[0])
