"""Adding jobs: one at a time (the fewest statements for the common case) or in bulk through COPY, with
dedupe keys, dependencies and the backlog cap (docs/protocol.md, "Keys", "Dependencies")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter
from typing import Any

from pgsched.db import Connection
from pgsched.errors import InvalidInput
from pgsched.models import Enqueued, NewJob
from pgsched.repository.queues import _admit, _lock_cap
from pgsched.sqlfiles import query


def commit_without_flush_wait(conn: Connection) -> None:
    """Let this producer session's commits return before the WAL flush (``Client(durable=False)``)."""
    conn.run(query("SessionCommitWithoutFlushWait"))


def insert_params(job: NewJob) -> dict[str, Any]:
    """JobInsert's parameters for ``job``, before its dependencies are counted and its queue admitted."""
    return {
        "queue": job.queue,
        "task": job.task,
        "payload": job.payload_json,
        "priority": job.priority,
        "run_at": job.run_at,
        "delay_s": job.delay_s,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "key": job.key,
        "group": job.group,
        "pending_deps": 0,
        "admitted": False,
    }


def enqueue(conn: Connection, job: NewJob) -> Enqueued:
    """Insert one job (or find the live job with its key), refusing missing or failed dependencies and
    respecting the queue's backlog cap."""
    params = insert_params(job)
    # A job with a trace context takes the traced variant of the insert; one without keeps the plain one.
    insert = "JobInsert"
    if job.trace_context is not None:
        params["trace_context"] = job.trace_context
        insert = "JobInsertTraced"
    if not job.after:
        # The common add: one statement, no transaction of its own; leaner still for a job due now with no key.
        now = insert == "JobInsert" and job.key is None and job.group is None and job.run_at is None and not job.delay_s
        row = conn.row(query("JobInsertNow" if now else insert), params)
        if row is not None:
            return Enqueued(row[0])
    with conn.transaction():
        cap = _lock_cap(conn, job.queue)
        if cap is not None:
            # The cap governs new jobs only: a keyed add whose key a live job holds returns that job, full or not.
            if job.key is not None and (
                held := conn.row(query("JobGetLiveByKey"), {"queue": job.queue, "key": job.key})
            ):
                return Enqueued(held[0], deduplicated=True)
            _admit(conn, job.queue, 1, cap)
        params["admitted"] = True
        params["pending_deps"] = _lock_dependencies(conn, job.after) if job.after else 0
        # A duplicate key can finish between our skipped insert and the look-up; then insert again.
        while True:
            row = conn.row(query(insert), params)
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
    """Lock the jobs ``after`` names and return how many have not succeeded yet (docs/protocol.md, "Dependencies")."""
    wanted = sorted(set(after))
    states = dict(conn.rows(query("JobLockDependencies"), {"ids": wanted}))
    if len(states) < len(wanted):  # succeeded jobs are in the history
        states.update(conn.rows(query("JobHistoryStates"), {"ids": [i for i in wanted if i not in states]}))
    missing = [job_id for job_id in wanted if job_id not in states]
    if missing:
        raise InvalidInput(f"--after {missing[0]}: no such job")
    for job_id in wanted:
        if states[job_id] in ("failed", "cancelled"):
            raise InvalidInput(f"--after {job_id}: that job {states[job_id]}, so this one could never run")
    return sum(1 for job_id in wanted if states[job_id] != "succeeded")


_COPY_TYPES = ["bigint", "text", "text", "jsonb", "integer", "timestamptz", "integer", "interval", "boolean", "text"]
_trace_context = attrgetter("trace_context")


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
            cap = _lock_cap(conn, queue)
            if cap is not None:
                _admit(conn, queue, count - _already_held(conn, queue, jobs), cap)
        ids, now = conn.row(query("JobIdReserveMany"), {"count": len(jobs)})  # type: ignore[misc]
        rows = (_copy_row(new_id, job, now) for new_id, job in zip(ids, jobs, strict=True))
        # Jobs with a trace context go in through the traced variants; a batch without keeps the plain columns.
        traced = any(map(_trace_context, jobs))
        if any(job.key for job in jobs):
            result = _enqueue_keyed(conn, jobs, ids, rows, traced)
        else:
            if all(_uses_table_defaults(job) for job in jobs):
                pairs = zip(ids, jobs, strict=True)
                if traced:
                    plain = ((i, job.queue, job.task, job.payload_json, job.trace_context) for i, job in pairs)
                    conn.copy_rows(query("JobCopyInPlainTraced"), [*_COPY_TYPES[:4], "jsonb"], plain)
                else:
                    plain = ((i, job.queue, job.task, job.payload_json) for i, job in pairs)
                    conn.copy_rows(query("JobCopyInPlain"), _COPY_TYPES[:4], plain)
            elif traced:
                traced_rows = ((*row, job.trace_context) for row, job in zip(rows, jobs, strict=True))
                conn.copy_rows(query("JobCopyInTraced"), [*_COPY_TYPES, "jsonb"], traced_rows)
            else:
                conn.copy_rows(query("JobCopyIn"), _COPY_TYPES, rows)
            result = _all_new(ids)
        wake = _wake_ups(jobs, now)
        conn.rows(query("QueueNotifyMany"), {"queues": [q for q, _ in wake], "ats": [at for _, at in wake]})
        return result


def _wake_ups(jobs: Sequence[NewJob], now: datetime) -> list[tuple[str, datetime]]:
    """Per queue, ``now`` if a job is due at once and the moment its earliest deferred job falls due."""
    due_now: set[str] = set()
    earliest: dict[str, datetime] = {}
    for job in jobs:
        run_at = _run_at(job, now)
        if run_at <= now:
            due_now.add(job.queue)
        elif job.queue not in earliest or run_at < earliest[job.queue]:
            earliest[job.queue] = run_at
    return sorted([(queue, now) for queue in due_now] + list(earliest.items()))


def _already_held(conn: Connection, queue: str, jobs: Sequence[NewJob]) -> int:
    """How many of ``jobs`` on ``queue`` will be deduplicated rather than added: their key is held by a live job
    or by an earlier line of the batch. The backlog cap counts only the others."""
    keys = [job.key for job in jobs if job.queue == queue and job.key is not None]
    if not keys:
        return 0
    live = {row[1] for row in conn.rows(query("JobGetLiveByKeys"), {"queues": [queue] * len(keys), "keys": keys})}
    return len(keys) - len(set(keys) - live)


def _all_new(ids: list[int]) -> list[Enqueued]:
    # tuple.__new__ straight from map(): half the cost of calling Enqueued() once per job from Python.
    return list(map(tuple.__new__, repeat(Enqueued), zip(ids, repeat(False))))


def _run_at(job: NewJob, now: datetime) -> datetime:
    """When a job of a bulk insert falls due; relative delays count from the server's clock (``now``)."""
    return job.run_at or (now + timedelta(seconds=job.delay_s) if job.delay_s else now)


def _copy_row(new_id: int, job: NewJob, now: datetime) -> tuple:
    """One job as the columns of JobCopyIn."""
    run_at = _run_at(job, now)
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
        job.group,
    )


def _uses_table_defaults(job: NewJob) -> bool:
    # Mirrors the column defaults in sql/0001_jobs.sql.
    return (
        job.group is None
        and job.priority == 0
        and job.run_at is None
        and not job.delay_s
        and job.max_attempts == 3
        and job.timeout_s == 300.0
    )


def _enqueue_keyed(
    conn: Connection, jobs: Sequence[NewJob], ids: list[int], rows: Iterator, traced: bool
) -> list[Enqueued]:
    conn.run(query("JobIncomingCreate"))
    if traced:
        traced_rows = ((*row, job.key, job.trace_context) for row, job in zip(rows, jobs, strict=True))
        conn.copy_rows(query("JobIncomingCopyInTraced"), [*_COPY_TYPES, "text", "jsonb"], traced_rows)
    else:
        keyed_rows = ((*row, job.key) for row, job in zip(rows, jobs, strict=True))
        conn.copy_rows(query("JobIncomingCopyIn"), [*_COPY_TYPES, "text"], keyed_rows)
    move = query("JobInsertFromIncomingTraced" if traced else "JobInsertFromIncoming")
    key_of = {new_id: (job.queue, job.key) for new_id, job in zip(ids, jobs, strict=True)}
    inserted: set[int] = set()
    holders: dict[tuple[str, str], int] = {}
    pending = ids
    # A job holding a key can finish between the skipped insert and the look-up of holders: its key is free
    # then, so the staged job is inserted in the next round instead of being reported as a duplicate of nothing.
    while pending:
        inserted.update(r[0] for r in conn.rows(move, {"ids": pending}))
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
