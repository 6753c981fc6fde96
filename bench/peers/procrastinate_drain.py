"""Enqueue N no-op jobs into Procrastinate, drain them with one worker, print one JSON line.

Runs inside the Procrastinate venv built by run.sh, against an empty database it installs its schema into.

  python procrastinate_drain.py --dsn postgresql://root@127.0.0.1:5432/peer_procrastinate --jobs 20500

Enqueue rate: wall-clock time of the batch_defer_async() calls (--enqueue-chunk jobs per call).
Drain rate: from the database clock read just before the worker starts to the time of the last 'succeeded' row
in procrastinate_events, which a trigger writes when a job's status changes to succeeded.
Procrastinate fetches one job per query; it has no batch size, only the worker's concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time

import procrastinate
import psycopg


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=20500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--enqueue-chunk", type=int, default=1000)
    args = parser.parse_args()

    # Procrastinate warns when its App lives in __main__ (a concern for its CLI worker, not for this script).
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=args.dsn))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        started = time.perf_counter()
        for offset in range(0, args.jobs, args.enqueue_chunk):
            n = min(args.enqueue_chunk, args.jobs - offset)
            await noop.batch_defer_async(*([{}] * n))
        enqueue_s = time.perf_counter() - started

        async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as probe:
            queued = (await (await probe.execute("SELECT count(*) FROM procrastinate_jobs")).fetchone())[0]
            if queued != args.jobs:
                raise SystemExit(f"expected {args.jobs} queued jobs, found {queued}")
            t0 = (await (await probe.execute("SELECT clock_timestamp()")).fetchone())[0]
            # wait=False: the worker returns once it has caught up with the queue.
            await app.run_worker_async(concurrency=args.concurrency, wait=False, install_signal_handlers=False)
            done, t1 = await (
                await probe.execute(
                    "SELECT count(*), max(at) FROM procrastinate_events WHERE type = 'succeeded'",
                )
            ).fetchone()

    if done != args.jobs:
        raise SystemExit(f"drain incomplete: {done} of {args.jobs} succeeded")
    seconds = (t1 - t0).total_seconds()
    print(
        json.dumps(
            {
                "peer": "procrastinate",
                "batch": 1,
                "concurrency": args.concurrency,
                "jobs": args.jobs,
                "enqueue_per_s": round(args.jobs / enqueue_s, 1),
                "drain_per_s": round(args.jobs / seconds, 1),
                "seconds": round(seconds, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
