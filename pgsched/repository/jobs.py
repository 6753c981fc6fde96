"""One job's life outside the worker: reading it, cancel, retry, and the cleanup of finished jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pgsched.db import Connection
from pgsched.errors import KeyTaken, NotFound, WrongState
from pgsched.sqlfiles import query


def get_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job's detail, or NotFound."""
    rows = conn.records(query("JobGet"), {"id": job_id})
    if not rows:
        raise NotFound(f"job {job_id} not found")
    return rows[0]


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
        done = cancel_in_transaction(conn, [job_id])
        if done.requested:
            return CancelResult(job_id, "running")
        if done.cancelled:
            return CancelResult(job_id, "cancelled", done.dependents_cancelled)
        state = conn.row(query("JobGetState"), {"id": job_id})
        if state is None:
            raise NotFound(f"job {job_id} not found")
        raise WrongState(f"job {job_id} already {state[0]}; nothing to cancel")


@dataclass
class CancelMany:
    """What cancelling several jobs did: cancelled at once, asked to stop (running), and dependents cancelled."""

    cancelled: list[int] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)
    dependents_cancelled: int = 0


def cancel_in_transaction(conn: Connection, ids: Sequence[int]) -> CancelMany:
    """Cancel the waiting or queued jobs of ``ids`` with their dependents, and record the request of the running
    ones and tell their workers: one statement for all of them (``JobCancelMany``), then one for the dependents.
    Finished or unknown ids are passed over. Runs in the caller's transaction when there is one, so the
    notifications go out on its commit."""
    done = CancelMany()
    with conn.transaction():
        for job_id, state, _ in conn.rows(query("JobCancelMany"), {"ids": list(ids)}):
            (done.requested if state == "running" else done.cancelled).append(job_id)
        if done.cancelled:
            settled = conn.row(query("JobSettleDependents"), {"ids": done.cancelled})
            done.dependents_cancelled = settled[0] if settled else 0
    return done


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
            conn.rows(query("QueueNotifyMany"), {"queues": sorted(queues), "ats": None})
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


def dependency_states(conn: Connection, job_id: int) -> list[tuple[int, str]]:
    """The jobs ``job_id`` depends on, with their states."""
    return [(r[0], r[1]) for r in conn.rows(query("JobListDependencyStates"), {"id": job_id})]
