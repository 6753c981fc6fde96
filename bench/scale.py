"""Drain rate on a clean table against the same drain on a table holding a large history and a large
scheduled backlog, and the cost of cleaning that history up, all in one run on a throwaway database: succeeded
jobs in the history, whose slot cleanup empties at once, side by side with as many finished jobs kept in
sched_jobs (failed ones, or succeeded ones a worker of an earlier release recorded), which it deletes row by row.

    python bench/scale.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--rows 1000000] [--jobs 20000]

Prints a table and, with --json, one JSON object. The database is created and dropped by the script."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from psycopg.conninfo import make_conninfo

from pgsched import db, migrate, repository
from pgsched.models import NewJob


def drain(conn: db.Connection, dsn: str, jobs: int, concurrency: int, batch: int) -> float:
    """Enqueue ``jobs`` no-ops, drain them with one `sched worker --burst`, return jobs/s by the DB clock."""
    added = repository.enqueue_many(conn, [NewJob(task="sched.noop", queue="scale") for _ in range(jobs)])
    ids = [job.id for job in added]
    conn.run("VACUUM ANALYZE sched_jobs")
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    args = [
        "worker",
        "--burst",
        "-q",
        "--queue",
        "scale",
        "--concurrency",
        str(concurrency),
        "--batch-size",
        str(batch),
    ]
    subprocess.run([sys.executable, "-m", "pgsched", *args], env=env, check=True)
    count, seconds = conn.row(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM sched_jobs_all "
        "WHERE id = ANY(%s) AND state = 'succeeded'",
        (ids,),
    )  # type: ignore[misc]
    if count != jobs:
        raise SystemExit(f"the worker finished {count} of {jobs} jobs")
    conn.run("DELETE FROM sched_job_history WHERE id = ANY(%s)", (ids,))
    conn.run("VACUUM ANALYZE sched_jobs, sched_job_history")
    return count / seconds


def fill(conn: db.Connection, rows: int) -> None:
    """``rows`` succeeded jobs (eight days old) in the history's current slot, as workers leave them, and
    ``rows`` jobs scheduled a day ahead, on the drained queue."""
    conn.run(
        "INSERT INTO sched_job_history (id, queue, task, payload, state, priority, run_at, attempt, max_attempts,"
        " timeout, pending_deps, deferred, has_dependents, created_at, started_at, finished_at, worker_id, slot) "
        "SELECT nextval('sched_jobs_id_seq'), 'scale', 'sched.noop', '{}', 'succeeded', 0, t, 1, 3, '5 minutes', 0,"
        " false, false, t, t, t, gen_random_uuid(), (SELECT current_slot FROM sched_history) "
        "FROM generate_series(1, %s), (SELECT now() - interval '8 days') AS w(t)",
        (rows,),
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, run_at, deferred) "
        "SELECT 'scale', 'sched.noop', now() + interval '1 day', true FROM generate_series(1, %s)",
        (rows,),
    )
    conn.run("VACUUM ANALYZE sched_jobs, sched_job_history")


def fill_rows(conn: db.Connection, rows: int) -> None:
    """``rows`` failed jobs (eight days old) in sched_jobs: what cleanup deletes row by row."""
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, worker_id, error) "
        "SELECT 'scale', 'sched.noop', 'failed', 1, now() - interval '8 days', now() - interval '8 days', "
        "gen_random_uuid(), 'x' FROM generate_series(1, %s)",
        (rows,),
    )
    conn.run("VACUUM ANALYZE sched_jobs")


def cleanup(dsn: str) -> dict:
    """`sched cleanup --older-than 7d --json` in its own process; its report."""
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, "-m", "pgsched", "cleanup", "--older-than", "7d", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SCHED_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished rows, and again future rows")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="drains per condition (the best is kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    name = f"sched_scale_{os.getpid()}"
    with db.connect(args.dsn) as admin:
        admin.run(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(args.dsn, dbname=name)
    try:
        with db.connect(dsn) as conn:
            migrate.apply(conn)
            clean = [drain(conn, dsn, args.jobs, args.concurrency, args.batch_size) for _ in range(args.runs)]
            started = time.perf_counter()
            fill(conn, args.rows)
            fill_s = time.perf_counter() - started
            crowded = [drain(conn, dsn, args.jobs, args.concurrency, args.batch_size) for _ in range(args.runs)]
            size = conn.row(
                "SELECT pg_size_pretty(pg_total_relation_size('sched_jobs')"
                " + (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('sched_job_history')))"
            )[0]  # type: ignore[index]
            report = cleanup(dsn)
            fill_rows(conn, args.rows)
            rows_report = cleanup(dsn)
    finally:
        with db.connect(args.dsn) as admin:
            admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result = {
        "rows": args.rows,
        "jobs_per_drain": args.jobs,
        "clean_drain_per_s": [round(r) for r in clean],
        "crowded_drain_per_s": [round(r) for r in crowded],
        "crowded_vs_clean_pct": round(100 * max(crowded) / max(clean), 1),
        "table_size_crowded": size,
        "fill_s": round(fill_s, 1),
        "cleanup_history_deleted": report["deleted"],
        "cleanup_history_slots_emptied": report["slots_emptied"],
        "cleanup_history_seconds": report["seconds"],
        "cleanup_rows_deleted": rows_report["deleted"],
        "cleanup_rows_seconds": rows_report["seconds"],
        "cleanup_rows_per_s": rows_report["rows_per_s"],
    }
    if args.json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
