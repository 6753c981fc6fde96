"""Bulk actions on the jobs a filter matches: counting and sampling them, and one batch at a time of retry,
cancel or purge. Each batch locks its jobs (SKIP LOCKED, keyset on id, sql/queries/bulk.sql) and applies the
single-job transitions of ``repository.jobs`` to them in one short transaction; looping over batches is the
caller's job (``pgsched.bulk``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pgsched.db import Connection
from pgsched.repository.jobs import cancel_in_transaction, retry_jobs
from pgsched.sqlfiles import query

# The cursor before the first id and after the last one.
FIRST_ID = 0
LAST_ID = 2**63 - 1


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a bulk action matches: ``states`` (never empty) and each other field when not None."""

    states: tuple[str, ...]
    queue: str | None = None
    task: str | None = None
    group: str | None = None
    key: str | None = None
    error_like: str | None = None
    since_s: float | None = None

    def params(self) -> dict[str, Any]:
        """The filter as the parameters of the queries in bulk.sql."""
        return {
            "states": list(self.states),
            "queue": self.queue,
            "task": self.task,
            "group": self.group,
            "key": self.key,
            "error_like": self.error_like,
            "since": None if self.since_s is None else timedelta(seconds=self.since_s),
        }


@dataclass
class Batch:
    """What one batch did. ``cursor`` resumes after it; None means the walk reached the end of the table."""

    cursor: int | None
    matched: int = 0
    changed: list[int] = field(default_factory=list)
    # retry: revived to waiting (in ``changed`` too); cancel: running jobs asked to stop (in ``changed`` too).
    waiting: list[int] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    dependents_cancelled: int = 0


def count_matching(conn: Connection, job_filter: JobFilter) -> int:
    """How many jobs the filter matches now."""
    row = conn.row(query("BulkJobCount"), job_filter.params())
    return int(row[0]) if row else 0


def sample_matching(conn: Connection, job_filter: JobFilter, limit: int = 5) -> list[dict[str, Any]]:
    """The latest ``limit`` matching jobs (id, queue, task, state, the first line of the error)."""
    return conn.records(query("BulkJobSample"), {**job_filter.params(), "limit": limit})


def _lock(conn: Connection, name: str, job_filter: JobFilter, after: int, batch: int, walk: int) -> tuple:
    row = conn.row(query(name), {**job_filter.params(), "after": after, "batch": batch, "walk": walk})
    upto, ids = row if row else (None, [])
    ids = list(ids or [])
    # A full batch may have left matches in the part it walked: resume after the last one it took.
    cursor = ids[-1] if len(ids) == batch else upto
    return cursor, ids


def retry_batch(conn: Connection, job_filter: JobFilter, after: int, batch: int, walk: int) -> Batch:
    """Retry the next batch of matching failed or cancelled jobs after id ``after`` (``retry_jobs`` on them)."""
    with conn.transaction():
        cursor, ids = _lock(conn, "BulkJobLockNext", job_filter, after, batch, walk)
        result = retry_jobs(conn, ids) if ids else None
    done = Batch(cursor, matched=len(ids))
    if result is not None:
        done.changed = sorted([*result.queued, *result.waiting])
        done.waiting = result.waiting
        done.refused = result.refused
    return done


def cancel_batch(conn: Connection, job_filter: JobFilter, after: int, batch: int, walk: int) -> Batch:
    """Cancel the next batch of matching waiting or queued jobs after id ``after`` (with their dependents), and
    ask the workers of matching running jobs to stop them, as ``cancel_job`` does for one."""
    with conn.transaction():
        cursor, ids = _lock(conn, "BulkJobLockNext", job_filter, after, batch, walk)
        result = cancel_in_transaction(conn, ids) if ids else None
    done = Batch(cursor, matched=len(ids))
    if result is not None:
        done.changed = sorted([*result.cancelled, *result.requested])
        done.requested = result.requested
        done.dependents_cancelled = result.dependents_cancelled
    return done


@dataclass
class Purged:
    """How many jobs a purge deleted, by state."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


def purge_batch(conn: Connection, job_filter: JobFilter, after: int, batch: int, walk: int) -> tuple[Batch, Purged]:
    """Delete the next batch of matching terminal jobs below id ``after``, newest first; a failed or cancelled
    job that a remaining job depends on is kept, and counted as refused (bulk.sql, BulkJobDelete)."""
    if not set(job_filter.states) <= {"succeeded", "failed", "cancelled"}:
        raise ValueError("purge deletes terminal jobs only")
    purged = Purged()
    with conn.transaction():
        cursor, ids = _lock(conn, "BulkJobLockPrevious", job_filter, after, batch, walk)
        deleted = conn.rows(query("BulkJobDelete"), {"ids": ids}) if ids else []
        if "succeeded" in job_filter.states:  # the history's matches in the range this batch walked
            upto = FIRST_ID if cursor is None else cursor
            history = conn.rows(query("BulkHistoryDelete"), {**job_filter.params(), "after": after, "upto": upto})
            deleted += history
            ids += [job_id for job_id, _ in history]
    for _, state in deleted:
        setattr(purged, state, getattr(purged, state) + 1)
    gone = {job_id for job_id, _ in deleted}
    done = Batch(cursor, matched=len(ids), changed=sorted(gone))
    done.refused = [job_id for job_id in ids if job_id not in gone]
    return done, purged
