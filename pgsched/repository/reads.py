"""Read models for the operator tools (status, why, the dashboard, doctor, the demo's summary, role checks):
what they show, as typed rows built from the queries' own column names (sql/queries/reads.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pgsched.db import Connection
from pgsched.sqlfiles import query

# --- status and why --------------------------------------------------------------------------------------


def count_by_queue(conn: Connection, queue: str | None = None) -> list[dict[str, Any]]:
    """Per-queue job counts by state and the age of the oldest ready job."""
    return conn.records(query("JobCountByQueue"), {"queue": queue})


def explain_facts(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    """The facts that decide whether a ready job runs: queue settings, running jobs against the queue's limits,
    serving workers, their load, jobs ahead."""
    rows = conn.records(
        query("JobExplainFacts"),
        {
            "id": job["id"],
            "queue": job["queue"],
            "task": job["task"],
            "priority": job["priority"],
            "run_at": job["run_at"],
            "group": job.get("group"),
        },
    )
    return rows[0] if rows else {}


def table_exists(conn: Connection, name: str) -> bool:
    """Whether a relation exists, so readers can tolerate a schema that an older sched created."""
    row = conn.row(query("TableExists"), {"name": name})
    return bool(row and row[0])


def database_exists(conn: Connection, name: str) -> bool:
    """Whether a database of this name exists on the server."""
    row = conn.row(query("DatabaseExists"), {"name": name})
    return bool(row and row[0])


# --- the dashboard ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueLive:
    """A queue's ready, scheduled and running jobs, and how long its oldest ready job has waited."""

    queue: str
    queued: int
    scheduled: int
    running: int
    oldest_ready_age_s: float


@dataclass(frozen=True, slots=True)
class QueueRecent:
    """A queue's jobs finished in the last minute and final failures in the last hour."""

    queue: str
    finished_last_minute: int
    failed_last_hour: int


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """A queue's waiting jobs and all-time terminal counts."""

    queue: str
    waiting: int
    succeeded: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class RecentFailure:
    """A final failure of the last hour."""

    id: int
    queue: str
    task: str
    attempt: int
    error: str
    age_s: float


@dataclass(frozen=True, slots=True)
class BusyGroup:
    """One of a queue's busiest groups: its running jobs and its ready ones (counted up to 1,000)."""

    queue: str
    group_name: str
    running: int
    ready: int


@dataclass(frozen=True, slots=True)
class QueueControl:
    """A paused or rate-limited queue."""

    queue: str
    paused: bool
    rate: float | None


def queue_live(conn: Connection, queue: str | None = None) -> list[QueueLive]:
    """Per queue: ready, scheduled and running jobs (through the claim's partial indexes only)."""
    return conn.typed(QueueLive, query("DashboardQueueLive"), {"queue": queue})


def queue_recent(conn: Connection, queue: str | None = None) -> list[QueueRecent]:
    """Per queue: throughput over the last minute and final failures over the last hour."""
    return conn.typed(QueueRecent, query("DashboardQueueRecent"), {"queue": queue})


def queue_totals(conn: Connection, queue: str | None = None) -> list[QueueTotals]:
    """Per queue: waiting jobs and all-time terminal counts (a scan of the whole table)."""
    return conn.typed(QueueTotals, query("DashboardQueueTotals"), {"queue": queue})


def recent_failures(conn: Connection, queue: str | None, limit: int) -> list[RecentFailure]:
    """The latest final failures of the last hour, newest first."""
    return conn.typed(RecentFailure, query("DashboardRecentFailures"), {"queue": queue, "limit": limit})


def busiest_groups(conn: Connection, queues: list[str], limit: int = 5) -> list[BusyGroup]:
    """The busiest groups of each of ``queues`` (most running, then next in claim order), at most ``limit`` each;
    its cost follows the workers' slots and ``limit``, never the number of groups."""
    return conn.typed(BusyGroup, query("DashboardBusiestGroups"), {"queues": queues, "limit": limit})


def queue_controls(conn: Connection) -> list[QueueControl]:
    """Paused and rate-limited queues."""
    return conn.typed(QueueControl, query("QueueControlList"))


# --- doctor ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadyQueue:
    """A queue with ready jobs: how many, the oldest one's age, and the live workers serving it."""

    queue: str
    ready: int
    oldest_age_s: float
    live_workers: int


@dataclass(frozen=True, slots=True)
class UnhandledTask:
    """Ready jobs of a task that no live worker of their queue handles."""

    queue: str
    task: str
    ready: int


@dataclass(frozen=True, slots=True)
class TableHealth:
    """Dead and live tuples of sched_jobs, its last vacuum, and the autovacuum settings that apply to it."""

    live: int
    dead: int
    vacuumed_age_s: float | None
    autovacuum_count: int
    reloptions: list[str]
    autovacuum_on: bool
    scale_factor: float
    threshold: int


@dataclass(frozen=True, slots=True)
class HorizonHolder:
    """Something that holds back vacuum's horizon: a session's transaction or snapshot, a prepared transaction, a
    replication slot or a standby's feedback. ``this_database`` is true when it is in the database checked;
    ``holds_jobs`` is false for a slot holding only the system catalogs (its catalog_xmin); ``hidden`` is true
    for another role's session whose start, state, address and query this role may not see."""

    kind: str
    who: str
    database: str | None
    role: str | None
    application_name: str
    client_addr: str | None
    state: str | None
    age_s: float | None
    xmin_age: int | None
    catalog_xmin_age: int | None
    this_database: bool
    holds_jobs: bool
    hidden: bool
    query: str | None


@dataclass(frozen=True, slots=True)
class HorizonVisibility:
    """Whether the connected role sees every session in full, and how many of other roles' it does not, in this
    database and in others."""

    sees_all: bool
    role: str
    hidden_here: int
    hidden_elsewhere: int


@dataclass(frozen=True, slots=True)
class ReadyIndexSize:
    """Sizes of sched_jobs and its ready index, with the table's live and dead tuples from the statistics."""

    table_bytes: int
    live: int
    dead: int
    ready_index_bytes: int | None
    block_size: int


def ready_queues(conn: Connection) -> list[ReadyQueue]:
    """Queues with ready jobs, oldest wait and live workers."""
    return conn.typed(ReadyQueue, query("DoctorReadyQueues"))


def paused_queues(conn: Connection) -> set[str]:
    """Queues an operator paused (none on a schema older than queue controls)."""
    if not table_exists(conn, "sched_queues"):
        return set()
    return {row[0] for row in conn.rows(query("DoctorPausedQueues"))}


def unhandled_tasks(conn: Connection) -> list[UnhandledTask]:
    """Ready jobs whose queue has live workers but none with a handler for their task."""
    return conn.typed(UnhandledTask, query("DoctorUnhandledTasks"))


def job_table_health(conn: Connection) -> TableHealth | None:
    """sched_jobs' tuples, vacuum and autovacuum settings."""
    rows = conn.typed(TableHealth, query("DoctorJobTableHealth"))
    return rows[0] if rows else None


def horizon_holders(conn: Connection, max_age_s: float, max_xids: int) -> list[HorizonHolder]:
    """Holders of vacuum's horizon older than ``max_age_s`` or ``max_xids`` transactions, oldest xmin first."""
    params = {"max_age": timedelta(seconds=max_age_s), "max_xids": max_xids}
    return conn.typed(HorizonHolder, query("DoctorHorizonHolders"), params)


def horizon_visibility(conn: Connection) -> HorizonVisibility:
    """What of the horizon the connected role cannot see."""
    return conn.typed(HorizonVisibility, query("DoctorHorizonVisibility"))[0]


def ready_index_size(conn: Connection) -> ReadyIndexSize:
    """Sizes of sched_jobs and its ready index, and its dead tuples."""
    return conn.typed(ReadyIndexSize, query("DoctorReadyIndexSize"))[0]


def ready_index_probe(conn: Connection, queue: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of finding the next ready job of ``queue``: the plan's top node, with the
    pages it touched and the time it took."""
    row = conn.row(query("DoctorReadyIndexProbe"), {"queue": queue})
    return row[0][0] if row else {}


# --- the demo --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """One task's jobs by state over some queues, and the attempts they spent."""

    task: str
    waiting: int
    queued: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    attempts: int


def count_by_task(conn: Connection, queues: list[str]) -> list[TaskCounts]:
    """Per task, over ``queues``: jobs by state and attempts spent."""
    return conn.typed(TaskCounts, query("DemoCountByTask"), {"queues": queues})


# --- roles -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerPrivileges:
    """What granting to sched's roles needs of the caller: CREATEROLE, and the right to pass on CONNECT and
    TEMPORARY on this database."""

    user: str
    can_create_roles: bool
    can_grant_database: bool


def existing_roles(conn: Connection, names: list[str]) -> set[str]:
    """Which of ``names`` exist as roles on the server."""
    return {row[0] for row in conn.rows(query("RoleListSched"), {"roles": names})}


def caller_privileges(conn: Connection) -> CallerPrivileges:
    """The connected role's privileges that granting to sched's roles needs."""
    row = conn.row(query("RoleCallerPrivileges"))
    return CallerPrivileges(*row) if row else CallerPrivileges("this role", False, False)
