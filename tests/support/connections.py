"""Running a piece of asyncio code on a connection of its own from a synchronous test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pgsched import db

T = TypeVar("T")


def run_async(dsn: str, body: Callable[[db.AsyncConnection], Awaitable[T]]) -> T:
    """Run ``body(conn)`` with its own asyncio connection to ``dsn`` on its own event loop; returns its result."""

    async def main() -> T:
        conn = await db.connect_async(dsn)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())
