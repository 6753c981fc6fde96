"""A worker's database connections, and the one place that decides what a failed database call means: a lost
connection is dropped and reopened with backoff, any other error is logged, and the caller carries on."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from types import TracebackType

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection, connect_async
from pgsched.errors import DatabaseUnavailable, SchedError
from pgsched.worker.stopping import Stop


class Link:
    """One database connection of the worker, reconnected with jittered exponential backoff when lost.

    An outage is logged once when it begins and once when it ends, never per try. Once a stop is requested, a
    link not ``needed_in_shutdown`` (claims, LISTEN) gives up at once; the others (outcomes, control) keep
    trying until the ``give_up_at`` the engine sets from the shutdown timeout, so a shutdown ends in bounded time
    whatever the database's state; a forced stop ends every try at once. A link that gave up answers each
    further call after a backoff pause rather than at once, so no caller's loop can spin on it."""

    # Reconnect pauses: from the first, doubling up to the cap, each drawn from its upper half (jitter), so a
    # fleet of workers that lost one server does not come back to it in step.
    FIRST_DELAY_S = 0.1
    MAX_DELAY_S = 5.0

    def __init__(
        self,
        dsn: str,
        role: str,
        stop: Stop,
        *,
        commit: str | None = None,
        claims: bool = False,
        needed_in_shutdown: bool = False,
        mode: str | None = None,
    ) -> None:
        self._dsn = dsn
        self.role = role
        self._stop = stop
        # synchronous_commit for this connection's transactions; None keeps the server's (see engine.py).
        self._commit = commit
        self._needed_in_shutdown = needed_in_shutdown
        # A connection that claims first moves the lease sequence past anything a server crash took back.
        self._claims = claims
        self.give_up_at: float | None = None  # a time.monotonic() past which a stopping worker stops trying
        # SCHED_POOL_MODE for this URL; None reads the setting (see db.pool_mode).
        self._mode = mode
        self.conn: AsyncConnection | None = None
        self._delay = self.FIRST_DELAY_S
        self._failures = 0
        self._down_since: float | None = None
        # Set while the link has given up (a stopping worker), until a connection succeeds again.
        self.gave_up = asyncio.Event()

    @property
    def up(self) -> bool:
        """Whether the connection is open, as far as this side knows."""
        return self.conn is not None and not self.conn.broken

    @property
    def unreachable(self) -> bool:
        """Whether its last attempt to connect failed (and none has succeeded since)."""
        return self._failures > 0

    async def get(self) -> AsyncConnection:
        """The open connection, reconnecting (with backoff) first if it was lost; raises DatabaseUnavailable when
        it gives up (see the class's doc)."""
        if self.conn is not None and not self.conn.broken:
            return self.conn
        if self.gave_up.is_set():
            # Someone calls again after a give-up: make them wait a pause, whatever the stop says.
            await asyncio.sleep(self._next_delay())
        while True:
            try:
                conn = await connect_async(self._dsn, application_name=f"sched-worker-{self.role}", mode=self._mode)
            except DatabaseUnavailable as exc:
                self._failures += 1
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "reconnecting ({}) failed: {}; retrying with backoff (at most {:g}s apart)",
                        self.role,
                        exc.message,
                        self.MAX_DELAY_S,
                    )
                if self._giving_up():
                    self.gave_up.set()
                    raise
                await self._pause(self._next_delay())
                continue
            try:
                await self._prepare(conn)
            except SchedError:
                await conn.close()
                raise
            self.conn = conn
            self.gave_up.clear()
            self._delay = self.FIRST_DELAY_S
            if self._failures:
                logger.info(
                    "database connection ({}) restored after {} attempt(s) in {:.1f}s",
                    self.role,
                    self._failures,
                    time.monotonic() - (self._down_since or 0.0),
                )
            self._down_since = None
            self._failures = 0
            return conn

    async def _prepare(self, conn: AsyncConnection) -> None:
        if self._claims:
            await repository.skip_leases_ahead(conn)
            if not conn.pooled:
                await repository.plan_claims_by_index(conn)
        if self._commit is None:
            return
        if conn.pooled:
            conn.commit_level_each_transaction(self._commit)
        else:
            await repository.set_commit_durability(conn, self._commit)

    def _giving_up(self) -> bool:
        stop = self._stop
        if stop.forced.is_set():
            return True
        if not stop.requested.is_set():
            return False
        if not self._needed_in_shutdown:
            return True
        return self.give_up_at is not None and time.monotonic() >= self.give_up_at

    def _next_delay(self) -> float:
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.MAX_DELAY_S)
        return delay

    async def _pause(self, seconds: float) -> None:
        """Sleep between tries, waking early for a stop request (once one is in force, only for a forced stop or
        ``give_up_at``)."""
        stop = self._stop
        if not stop.requested.is_set():
            await stop.sleep(seconds)
            return
        if self.give_up_at is not None:
            seconds = min(seconds, max(0.0, self.give_up_at - time.monotonic()))
        await stop.sleep(seconds, forced_only=True)

    async def lost(self) -> None:
        """Drop a connection that failed; the next ``get`` reconnects."""
        conn, self.conn = self.conn, None
        if conn is not None:
            if self._down_since is None:
                self._down_since = time.monotonic()
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
