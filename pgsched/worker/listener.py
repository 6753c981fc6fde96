"""LISTEN for wake-ups: a NOTIFY on ``sched_wakeup`` wakes the fetcher (or tells it when a job falls due), one
on ``sched_cancel`` asks to stop every run of a job this worker holds."""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection
from pgsched.worker.fetcher import DueTimes
from pgsched.worker.link import Link
from pgsched.worker.stopping import Stop


class Listener:
    """Listens on its own connection; polling covers any gap while it reconnects. Behind a transaction pooler
    LISTEN cannot work (the pool hands the server connection that listens to other clients between
    transactions): the listener then says so once and leaves the worker to poll, unless the worker has a
    separate URL for LISTEN (--listen-url, SCHED_LISTEN_URL), a direct or session-mode connection."""

    def __init__(
        self, link: Link, due: DueTimes, cancel_job: Callable[[int], None], stop: Stop, poll_interval: float
    ) -> None:
        self._link = link
        self._due = due
        self._cancel_job = cancel_job
        self._stop = stop
        self._poll_interval = poll_interval

    async def run(self) -> None:
        while not self._stop.requested.is_set():
            async with self._link.attempt("listening for wake-ups", "; polling meanwhile") as attempt:
                conn = await self._link.get()
                if conn.pooled:
                    logger.warning(
                        "the database URL goes through a transaction pooler, where LISTEN cannot work: not "
                        "listening; polling every {:g}s (give the worker a direct or session-mode URL for "
                        "LISTEN with --listen-url or SCHED_LISTEN_URL)",
                        self._poll_interval,
                    )
                    await self._link.close()
                    return
                await conn.listen([repository.wakeup_channel(), repository.cancel_channel()])
                # Anything enqueued while we were not listening is found by this poll.
                self._due.wake.set()
                while True:
                    await self.receive_once(conn)
            if attempt.failed and not attempt.connection_lost:
                # Listen again on a fresh connection after a pause.
                await self._link.lost()
                await self._stop.sleep(self._poll_interval)

    async def receive_once(self, conn: AsyncConnection, timeout: float = 5.0) -> None:
        """Handle the notifications that arrive within ``timeout`` seconds."""
        for channel, payload in await conn.notifications(timeout=timeout):
            if channel == repository.cancel_channel():
                if payload.isdigit():
                    self._cancel_job(int(payload))
                continue
            self._due.on_wakeup(payload)
