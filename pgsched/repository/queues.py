"""Queue controls: pause, the token bucket, the backlog cap (admission), concurrency limits, and the listing of
queues."""

from __future__ import annotations

from typing import Any

from pgsched.db import Connection
from pgsched.errors import QueueFull
from pgsched.sqlfiles import query


def _lock_cap(conn: Connection, queue: str) -> int | None:
    """The backlog cap of ``queue``, its row locked until the insert's transaction ends (so concurrent adds take
    turns); None for a queue without a cap, which locks nothing."""
    row = conn.row(query("QueueAdmitLock"), {"queue": queue})
    return None if row is None else row[0]


def _admit(conn: Connection, queue: str, count: int, max_backlog: int | None = None) -> None:
    """Refuse ``count`` new jobs on ``queue`` when that would pass its max backlog (read and locked here unless
    given); call inside the insert's transaction."""
    if count <= 0:
        return
    if max_backlog is None:
        max_backlog = _lock_cap(conn, queue)
        if max_backlog is None:
            return
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


def set_queue_concurrency(
    conn: Connection,
    queue: str,
    *,
    max_running: int | None = None,
    group_concurrency: int | None = None,
    set_max_running: bool = True,
    set_group_concurrency: bool = True,
) -> None:
    """Limit ``queue``'s running jobs across all workers (``max_running``) and per group (``group_concurrency``);
    None removes a limit. A ``set_...`` flag that is False leaves that limit as it is."""
    with conn.transaction():
        conn.run(
            query("QueueSetConcurrency"),
            {
                "queue": queue,
                "max_running": max_running,
                "group_concurrency": group_concurrency,
                "set_max_running": set_max_running,
                "set_group_concurrency": set_group_concurrency,
            },
        )
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


def set_queue_group_rate(conn: Connection, queue: str, rate: float | None, burst: float | None = None) -> None:
    """Give every group of ``queue`` a token bucket of ``rate`` jobs per second across all workers (bursts up to
    ``burst``, one second's worth by default); None removes it. Every bucket starts full."""
    if rate is not None and burst is None:
        burst = max(1.0, rate)
    with conn.transaction():
        conn.run(
            query("QueueSetGroupRate"), {"queue": queue, "rate": rate, "burst": burst if rate is not None else None}
        )
        conn.run(query("QueueGroupBucketsDelete"), {"queue": queue})
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


def set_queue_fair(conn: Connection, queue: str, fair: bool) -> None:
    """Turn fair sharing between the groups of ``queue`` on (the default) or off."""
    with conn.transaction():
        conn.run(query("QueueSetFair"), {"queue": queue, "fair": fair})
        conn.run(query("QueueDeleteUnconfigured"), {"queue": queue})


def list_queues(conn: Connection) -> list[dict[str, Any]]:
    """Queues with jobs or settings: paused, rate, burst, current tokens, max backlog, max running, group
    concurrency, group rate and burst, fair sharing, group buckets refilling, queued and running."""
    return conn.records(query("QueueList"))
