"""What ``sched bench`` reads and clears in its throwaway database between measurements (sql/queries/bench.sql)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pgsched.db import Connection
from pgsched.sqlfiles import query


def server_version(conn: Connection) -> str:
    """The server's version as people write it, e.g. 15.10."""
    row = conn.row(query("BenchServerVersion"))
    return str(row[0]) if row else "unknown"


def delete_queue(conn: Connection, queue: str) -> None:
    """Delete every job of ``queue``."""
    conn.run(query("BenchJobsDeleteQueue"), {"queue": queue})


def vacuum_jobs(conn: Connection) -> None:
    """VACUUM ANALYZE sched_jobs."""
    conn.run(query("BenchJobsVacuum"))


def ready_count(conn: Connection, queue: str) -> int:
    """Queued jobs of ``queue``."""
    row = conn.row(query("BenchQueueReady"), {"queue": queue})
    return int(row[0]) if row else 0


def succeeded_window(conn: Connection, queue: str) -> tuple[int, float]:
    """How many jobs of ``queue`` succeeded, and the seconds from the first start to the last finish."""
    row = conn.row(query("BenchQueueWindow"), {"queue": queue})
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def latencies_ms(conn: Connection, queue: str) -> list[float]:
    """Enqueue-to-start latency of each started job of ``queue``, in milliseconds, sorted."""
    return sorted(row[0] for row in conn.rows(query("BenchLatencies"), {"queue": queue}))


def worker_registered(conn: Connection, pid: int) -> bool:
    """Whether the worker process ``pid`` has registered."""
    row = conn.row(query("BenchWorkerRegistered"), {"pid": pid})
    return bool(row and row[0])


@contextmanager
def commit_table(conn: Connection) -> Iterator[None]:
    """A scratch table for the commit baseline, dropped afterwards."""
    conn.run(query("BenchCommitTableCreate"))
    try:
        yield
    finally:
        conn.run(query("BenchCommitTableDrop"))


def commit_one(conn: Connection) -> None:
    """Insert one row into the scratch table, in a transaction of its own."""
    conn.run(query("BenchCommitInsert"))
