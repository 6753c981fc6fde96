"""A worker's stop requests (graceful first, forced on a second signal) and waiting on several events."""

from __future__ import annotations

import asyncio
import signal

from loguru import logger


class Stop:
    """Whether the worker should stop: ``requested`` (finish running jobs), ``forced`` (release them now), and
    ``draining`` once shutdown has begun (claim nothing more)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.draining = False

    def request(self, sig: int | None = None) -> None:
        """First call: graceful stop. Second call: skip waiting for running jobs."""
        if self.requested.is_set():
            logger.warning("second signal: releasing running jobs now")
            self.forced.set()
            return
        if sig is not None:
            logger.info("received {}, shutting down gracefully", signal.Signals(sig).name)
        self.requested.set()

    async def sleep(self, seconds: float, *, forced_only: bool = False) -> None:
        """Sleep, waking early when a stop (or, with ``forced_only``, a forced stop) is requested."""
        await wait_any(self.forced if forced_only else self.requested, timeout=seconds)


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until any event is set or the timeout passes."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
