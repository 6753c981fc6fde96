"""A worker's database connections, and the one place that decides what a failed database call means: a lost
connection is dropped and reopened with backoff, any other error is logged, and the caller carries on."""

from __future__ import annotations

import contextlib
import random
from types import TracebackType

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection, connect_async
from pgsched.errors import DatabaseUnavailable, SchedError
from pgsched.worker.stopping import Stop


class Link:
    """One database connection of the worker, reconnected with jittered exponential backoff when lost."""

    def __init__(self, dsn: str, role: str, stop: Stop, *, commit: str | None = None) -> None:
        self._dsn = dsn
        self.role = role
        self._stop = stop
        # synchronous_commit for this connection's sessions; None keeps the server's (see engine.py).
        self._commit = commit
        self.conn: AsyncConnection | None = None

    @property
    def up(self) -> bool:
        """Whether the connection is open, as far as this side knows."""
        return self.conn is not None and not self.conn.broken

    async def get(self) -> AsyncConnection:
        """The open connection, reconnecting (with backoff) first if it was lost; gives up only on a forced stop."""
        if self.conn is not None and not self.conn.broken:
            return self.conn
        delay = 0.1
        failures = 0
        while True:
            try:
                self.conn = await connect_async(self._dsn, application_name=f"sched-worker-{self.role}")
                if self._commit is not None:
                    await repository.set_commit_durability(self.conn, self._commit)
                if failures:
                    logger.info("database connection ({}) restored after {} attempt(s)", self.role, failures)
                return self.conn
            except DatabaseUnavailable as exc:
                failures += 1
                if failures == 1:
                    logger.warning("reconnecting ({}) failed: {}; retrying with backoff", self.role, exc.message)
                if self._stop.forced.is_set():
                    raise
                await self._stop.sleep(delay * random.uniform(0.5, 1.0), forced_only=True)
                delay = min(delay * 2, 5.0)

    async def lost(self) -> None:
        """Drop a connection that failed; the next ``get`` reconnects."""
        conn, self.conn = self.conn, None
        if conn is not None:
            logger.warning("database connection ({}) lost; reconnecting", self.role)
            # Closing a dead socket may fail in many ways; it is gone either way.
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def attempt(self, doing: str, then: str = "") -> Attempt:
        """Guard one use of this connection: ``async with link.attempt("claim") as a:``, then read ``a.failed``.
        A lost connection is dropped for reconnecting; another SchedError is logged as "``doing`` failed:
        <why>``then``". Neither escapes the block; anything else does (and stops the worker, see engine.py)."""
        return Attempt(self, doing, then)


class Attempt:
    """One guarded use of a Link (see ``Link.attempt``)."""

    def __init__(self, link: Link, doing: str, then: str) -> None:
        self._link = link
        self._doing = doing
        self._then = then
        self.failed = False
        self.connection_lost = False

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            return False
        if isinstance(exc, DatabaseUnavailable):
            self.failed = self.connection_lost = True
            await self._link.lost()
            return True
        if isinstance(exc, SchedError):
            self.failed = True
            logger.error("{} failed: {}{}", self._doing, exc.message, self._then)
            return True
        return False
