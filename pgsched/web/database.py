"""The dashboard's one database connection: shared by every request under a lock (a dashboard serves a few
people, and one connection keeps its cost on the server flat), reopened after it breaks, and counting the
queries each page runs so the page can say what it cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pgsched import db
from pgsched.dashboard import Reader, Snapshot
from pgsched.errors import DatabaseUnavailable

T = TypeVar("T")


class CountedConnection(db.Connection):
    """A connection that counts its statements and the time they take."""

    queries = 0
    seconds = 0.0

    def _timed(self, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.queries += 1
            self.seconds += time.perf_counter() - started

    def rows(self, sql: str, params: Any = None) -> list[tuple]:
        return self._timed(lambda: super(CountedConnection, self).rows(sql, params))

    def row(self, sql: str, params: Any = None) -> tuple | None:
        return self._timed(lambda: super(CountedConnection, self).row(sql, params))

    def run(self, sql: str, params: Any = None) -> int:
        return self._timed(lambda: super(CountedConnection, self).run(sql, params))

    def records(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self._timed(lambda: super(CountedConnection, self).records(sql, params))

    def typed(self, row_type: Callable[..., T], sql: str, params: Any = None) -> list[T]:
        return self._timed(lambda: super(CountedConnection, self).typed(row_type, sql, params))


@dataclass
class Cost:
    """What one page's reads cost the database."""

    queries: int = 0
    ms: float = 0.0


class Database:
    """Runs a page's reads and actions on the shared connection, one page at a time."""

    def __init__(self, dsn: str, *, snapshot_every_s: float = 1.0) -> None:
        self.dsn = dsn
        self.snapshot_every_s = snapshot_every_s
        self._lock = threading.Lock()
        self._conn: CountedConnection | None = None
        self._reader: Reader | None = None
        self._snapshot: Snapshot | None = None
        self._snapshot_at = float("-inf")

    def _connection(self) -> CountedConnection:
        if self._conn is None or self._conn.raw.closed:
            self._conn = CountedConnection(db.connect(self.dsn, application_name="sched-ui").raw)
            self._reader = None
        return self._conn

    @contextmanager
    def session(self) -> Iterator[tuple[CountedConnection, Cost]]:
        """The connection for one page, and the cost of what the page ran on it (filled in at the end)."""
        with self._lock:
            conn = self._connection()
            cost = Cost()
            conn.queries, conn.seconds = 0, 0.0
            try:
                yield conn, cost
            except DatabaseUnavailable:
                # Reopen next time: the server restarted or the link broke.
                conn.close()
                self._conn = None
                raise
            finally:
                cost.queries, cost.ms = conn.queries, conn.seconds * 1000

    def run(self, call: Callable[[CountedConnection], T], *, again_if_broken: bool) -> tuple[T, Cost]:
        """``call`` on the connection, and what it cost. A read (``again_if_broken``) whose connection turns out
        to be broken, as every connection is after a server restart, runs once more on a new one; an action
        does not, since it may have committed before the link broke."""
        try:
            with self.session() as (conn, cost):
                return call(conn), cost
        except DatabaseUnavailable:
            if not again_if_broken:
                raise
        with self.session() as (conn, cost):
            return call(conn), cost

    def snapshot(self) -> tuple[Snapshot, Cost]:
        """The queue figures of ``sched status --watch``, read at most once per ``snapshot_every_s`` however
        many people watch: every viewer within that interval shares one read."""

        def read(conn: CountedConnection) -> Snapshot:
            if self._snapshot is None or time.monotonic() - self._snapshot_at >= self.snapshot_every_s:
                if self._reader is None:
                    self._reader = Reader(conn)
                self._snapshot = self._reader.snapshot()
                self._snapshot_at = time.monotonic()
            return self._snapshot

        return self.run(read, again_if_broken=True)

    def close(self) -> None:
        """Close the connection (the next page opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
