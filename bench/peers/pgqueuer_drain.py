"""Enqueue N no-op jobs into PgQueuer, drain them with one worker, print one JSON line.

Runs inside the PgQueuer venv built by run.sh, against an empty database it may install its schema into.

  python pgqueuer_drain.py --dsn postgresql://root@127.0.0.1:5432/peer_pgqueuer --jobs 20500 --batch 10

Enqueue rate: wall-clock time of the batched enqueue calls (--enqueue-chunk jobs per call).
Drain rate: from the database clock read just before the worker starts to the creation time of the last
'successful' row in pgqueuer_log. PgQueuer deletes a finished job and writes that row in one statement, so it
marks the moment the job left the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "noop"


async def enqueue(dsn: str, jobs: int, chunk: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        started = time.perf_counter()
        for offset in range(0, jobs, chunk):
            n = min(chunk, jobs - offset)
            # List arguments make one INSERT ... UNNEST round trip per chunk.
            await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def drain(dsn: str, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        # Drain mode: the manager returns once the queue is empty and its in-flight jobs are logged.
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=20500)
    parser.add_argument("--batch", type=int, default=10, help="QueueManager.run(batch_size=...)")
    parser.add_argument("--enqueue-chunk", type=int, default=1000)
    args = parser.parse_args()

    enqueue_s = await enqueue(args.dsn, args.jobs, args.enqueue_chunk)

    probe = await asyncpg.connect(args.dsn)
    try:
        queued = await probe.fetchval("SELECT count(*) FROM pgqueuer WHERE entrypoint = $1", ENTRYPOINT)
        if queued != args.jobs:
            raise SystemExit(f"expected {args.jobs} queued jobs, found {queued}")
        t0 = await probe.fetchval("SELECT clock_timestamp()")
        await drain(args.dsn, args.batch)
        done, t1, left = await probe.fetchrow(
            "SELECT count(*), max(created), (SELECT count(*) FROM pgqueuer)"
            " FROM pgqueuer_log WHERE status = 'successful' AND entrypoint = $1",
            ENTRYPOINT,
        )
    finally:
        await probe.close()
    if done != args.jobs or left != 0:
        raise SystemExit(f"drain incomplete: {done} successful, {left} still in queue")

    seconds = (t1 - t0).total_seconds()
    print(
        json.dumps(
            {
                "peer": "pgqueuer",
                "batch": args.batch,
                "jobs": args.jobs,
                "enqueue_per_s": round(args.jobs / enqueue_s, 1),
                "drain_per_s": round(args.jobs / seconds, 1),
                "seconds": round(seconds, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    try:
        import uvloop  # installed with pgqueuer; its own `pgq run` uses it when present, so do the same
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
