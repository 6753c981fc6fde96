"""The worker registry: a worker registers with its liveness contract, beats, and leaves."""

from __future__ import annotations

from typing import Any

from pgsched.db import AsyncConnection, Connection
from pgsched.errors import DatabaseError
from pgsched.sqlfiles import query


def list_workers(conn: Connection) -> list[dict[str, Any]]:
    """Registered workers and the age of their heartbeats."""
    return conn.records(query("WorkerList"))


async def register_worker(
    conn: AsyncConnection,
    worker_id: str,
    host: str,
    pid: int,
    queues: list[str],
    tasks: list[str],
    concurrency: int,
    *,
    stale_after_s: float,
    timeout_grace_s: float,
) -> None:
    """Add the worker's row with the liveness contract it will be judged by; it must exist before it claims.

    Refuses a database whose statements do not run at READ COMMITTED: a claim of a queue with flow control
    counts and charges on snapshots taken after it locked the queue's row (docs/protocol.md, "Concurrency
    limits"), which only READ COMMITTED gives; at REPEATABLE READ the limits could be passed."""
    ((isolation,),) = await conn.rows(
        query("WorkerRegister"),
        {
            "id": worker_id,
            "host": host,
            "pid": pid,
            "queues": queues,
            "tasks": tasks,
            "concurrency": concurrency,
            "stale_after_s": stale_after_s,
            "timeout_grace_s": timeout_grace_s,
        },
    )
    if isolation != "read committed":
        await conn.rows(query("WorkerDeregister"), {"id": worker_id})
        raise DatabaseError(
            f"sched's workers need READ COMMITTED, but this connection's transactions default to {isolation}"
            " (default_transaction_isolation); set it back for sched's role or database, e.g. ALTER ROLE"
            " <role> SET default_transaction_isolation = 'read committed'"
        )


async def schema_version(conn: AsyncConnection) -> int:
    """The newest migration applied to the database; 0 where sched's tables were never created."""
    ((exists,),) = await conn.rows(query("MigrationTableExists"))
    if not exists:
        return 0
    ((version,),) = await conn.rows(query("MigrationLatest"))
    return int(version)


async def heartbeat_worker(conn: AsyncConnection, worker_id: str, running: int) -> bool:
    """Beat; False means the worker's row is gone (it was reaped) and it must re-register."""
    return bool(await conn.rows(query("WorkerHeartbeat"), {"id": worker_id, "running": running}))


async def deregister_worker(conn: AsyncConnection, worker_id: str) -> None:
    """Remove the worker's row on a clean exit."""
    await conn.rows(query("WorkerDeregister"), {"id": worker_id})
