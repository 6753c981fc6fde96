"""What flow controls cost: the drain of no-op jobs on a queue without controls, beside the same drain spread
over 1,000 groups with --group-concurrency 5 (fair sharing on), over 1,000 groups with no limits (fair sharing
by default, and with --no-fair: the plain claim), over 1,000 groups with a group rate that never binds (the cost
of the buckets), and beside a queue with --max-running, all in one run on a throwaway database, the conditions
taking turns so that all see the same machine.

    python bench/flow.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--jobs 20000] [--groups 1000]

Also measures how one group's backlog delays the others (the fairness figure): one group with --big jobs queued
first and 20 groups with 50 each behind it, drained by one worker at concurrency 20 under --group-concurrency 20,
reporting how many of the big group's jobs had started when the last small group's last job started.

Prints a table and, with --json, one JSON object. The database is created and dropped by the script."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from psycopg.conninfo import make_conninfo

from pgsched import db, migrate, repository
from pgsched.models import NewJob


def drain(conn: db.Connection, dsn: str, queue: str, groups: list[str | None], concurrency: int, batch: int) -> float:
    """Enqueue one no-op per entry of ``groups`` on ``queue``, drain them with one `sched worker --burst`, and
    return jobs/s by the database's clock (first start to last finish)."""
    added = repository.enqueue_many(conn, [NewJob(task="sched.noop", queue=queue, group=g) for g in groups])
    ids = [job.id for job in added]
    conn.run("VACUUM ANALYZE sched_jobs")
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    args = ["worker", "--burst", "-q", "--queue", queue, "--concurrency", str(concurrency), "--batch-size", str(batch)]
    subprocess.run([sys.executable, "-m", "pgsched", *args], env=env, check=True)
    count, seconds = conn.row(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM sched_jobs_all "
        "WHERE id = ANY(%s) AND state = 'succeeded'",
        (ids,),
    )  # type: ignore[misc]
    if count != len(ids):
        raise SystemExit(f"the worker finished {count} of {len(ids)} jobs on {queue}")
    forget(conn, ids)
    conn.run("VACUUM ANALYZE sched_jobs")
    return count / seconds


def forget(conn: db.Connection, ids: list[int]) -> None:
    """Delete a drain's jobs: succeeded ones are in the history (docs/design.md, "History and cleanup")."""
    conn.run("DELETE FROM sched_job_history WHERE id = ANY(%s)", (ids,))
    conn.run("DELETE FROM sched_jobs WHERE id = ANY(%s)", (ids,))


def fairness(conn: db.Connection, dsn: str, big: int) -> int:
    """Jobs of the big group started before the last job of the 20 small groups started."""
    queue = "fair"
    repository.set_queue_concurrency(conn, queue, group_concurrency=20)
    groups: list[str | None] = ["big"] * big + [f"small{i}" for i in range(20) for _ in range(50)]
    added = repository.enqueue_many(conn, [NewJob(task="sched.noop", queue=queue, group=g) for g in groups])
    ids = [job.id for job in added]
    conn.run("VACUUM ANALYZE sched_jobs")
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    args = ["worker", "--burst", "-q", "--queue", queue, "--concurrency", "20", "--batch-size", "20"]
    subprocess.run([sys.executable, "-m", "pgsched", *args], env=env, check=True)
    # Claim order within one claim is id order; across claims, started_at (the claim's transaction time).
    ahead = conn.row(
        "WITH last AS (SELECT started_at, id FROM sched_jobs_all WHERE id = ANY(%(ids)s) AND group_name <> 'big' "
        "ORDER BY started_at DESC, id DESC LIMIT 1) "
        "SELECT count(*) FROM sched_jobs_all j, last WHERE j.id = ANY(%(ids)s) AND j.group_name = 'big' "
        "AND (j.started_at, j.id) <= (last.started_at, last.id)",
        {"ids": ids},
    )[0]  # type: ignore[index]
    forget(conn, ids)
    return ahead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SCHED_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--groups", type=int, default=1000, help="groups of the grouped drain")
    parser.add_argument("--group-concurrency", type=int, default=5)
    parser.add_argument("--max-running", type=int, default=1000, help="the limit of the max-running drain")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="drains per condition (the median is kept)")
    parser.add_argument("--big", type=int, default=50_000, help="jobs of the big group of the fairness run (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    name = f"sched_flow_{os.getpid()}"
    with db.connect(args.dsn) as admin:
        admin.run(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(args.dsn, dbname=name)
    conditions = ("plain", "grouped", "max_running", "fair", "unfair", "group_rate")
    rates: dict[str, list[float]] = {queue: [] for queue in conditions}
    try:
        with db.connect(dsn) as conn:
            migrate.apply(conn)
            repository.set_queue_concurrency(conn, "grouped", group_concurrency=args.group_concurrency)
            repository.set_queue_concurrency(conn, "max_running", max_running=args.max_running)
            repository.set_queue_fair(conn, "unfair", False)
            # A rate no group reaches in a drain: what reading and charging the buckets costs.
            repository.set_queue_group_rate(conn, "group_rate", 1_000_000, args.jobs)
            plain: list[str | None] = [None] * args.jobs
            spread: list[str | None] = [f"tenant:{i % args.groups}" for i in range(args.jobs)]
            for _ in range(args.runs):
                for queue in conditions:
                    groups = plain if queue in ("plain", "max_running") else spread
                    rates[queue].append(drain(conn, dsn, queue, groups, args.concurrency, args.batch_size))
            ahead = fairness(conn, dsn, args.big) if args.big else None
    finally:
        with db.connect(args.dsn) as admin:
            admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    median = {queue: statistics.median(values) for queue, values in rates.items()}
    result = {
        "jobs_per_drain": args.jobs,
        "worker": f"concurrency {args.concurrency}, batch {args.batch_size}",
        "plain_drain_per_s": [round(r) for r in rates["plain"]],
        f"grouped_drain_per_s ({args.groups} groups, group concurrency {args.group_concurrency})": [
            round(r) for r in rates["grouped"]
        ],
        f"max_running_drain_per_s (max running {args.max_running})": [round(r) for r in rates["max_running"]],
        f"fair_drain_per_s ({args.groups} groups, no limits: fair by default)": [round(r) for r in rates["fair"]],
        f"unfair_drain_per_s ({args.groups} groups, --no-fair)": [round(r) for r in rates["unfair"]],
        f"group_rate_drain_per_s ({args.groups} groups, a group rate that never binds)": [
            round(r) for r in rates["group_rate"]
        ],
        "grouped_vs_plain_pct (medians)": round(100 * median["grouped"] / median["plain"], 1),
        "grouped_vs_plain_pct (per run)": [
            round(100 * g / p, 1) for g, p in zip(rates["grouped"], rates["plain"], strict=True)
        ],
        "max_running_vs_plain_pct (medians)": round(100 * median["max_running"] / median["plain"], 1),
        "fair_vs_unfair_pct (medians)": round(100 * median["fair"] / median["unfair"], 1),
        "unfair_vs_plain_pct (medians)": round(100 * median["unfair"] / median["plain"], 1),
        "group_rate_vs_fair_pct (medians)": round(100 * median["group_rate"] / median["fair"], 1),
        f"big_group_jobs_started_before_the_last_small_job ({args.big} big, 20 x 50 small)": ahead,
    }
    if args.json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
