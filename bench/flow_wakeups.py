"""How fast one worker drains a queue whose limits hold it back (docs/protocol.md, "When a held-back worker looks
again"): a tight queue rate, a tight group rate, --max-running and --group-concurrency, beside the same worker on
a queue without limits, each in a throwaway database of its own, one after the other in one run.

    python bench/flow_wakeups.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--seconds 8]

Each condition starts one `sched worker --concurrency 50` (default poll interval, 1 s), adds its no-op jobs in one
statement, and lets the worker run until they are done or --seconds have passed; the drain rate is the jobs that
succeeded over the time from the first start to the last finish, by the database's clock. For the rates, the
figure to compare with is the rate itself: the worker should start jobs as fast as the tokens come. Prints a table
and, with --json, one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from psycopg.conninfo import make_conninfo

from pgsched import db, migrate, repository
from pgsched.models import NewJob

Limit = Callable[[db.Connection], None]

CONDITIONS: list[tuple[str, Limit, list[str | None], float | None]] = [
    ("no limits", lambda conn: None, [None] * 5000, None),
    ("--rate 50/s --burst 1", lambda conn: repository.set_queue_rate(conn, "q", 50.0, 1), [None] * 400, 50.0),
    (
        "--group-rate 20/s --group-burst 1, 4 groups",
        lambda conn: repository.set_queue_group_rate(conn, "q", 20.0, 1),
        [f"g{i % 4}" for i in range(640)],
        80.0,
    ),
    (
        "--max-running 20",
        lambda conn: repository.set_queue_concurrency(conn, "q", max_running=20),
        [None] * 5000,
        None,
    ),
    (
        "--group-concurrency 5, 4 groups",
        lambda conn: repository.set_queue_concurrency(conn, "q", group_concurrency=5),
        [f"g{i % 4}" for i in range(5000)],
        None,
    ),
]


def measure(server_dsn: str, limit: Limit, groups: list[str | None], seconds: float) -> tuple[int, float]:
    """Jobs that succeeded and their drain rate (jobs/s) in a database of their own, dropped afterwards."""
    name = f"sched_flow_wakeups_{uuid.uuid4().hex[:8]}"
    with db.connect(server_dsn) as admin:
        db.create_database(admin, name)
        try:
            dsn = db.with_database(server_dsn, name)
            with db.connect(dsn) as conn:
                migrate.apply(conn)
                limit(conn)
                env = {**os.environ, "SCHED_DATABASE_URL": dsn}
                args = ["worker", "-q", "--queue", "q", "--concurrency", "50"]
                worker = subprocess.Popen([sys.executable, "-m", "pgsched", *args], env=env)
                try:
                    while not conn.row("SELECT 1 FROM sched_workers"):
                        time.sleep(0.05)
                    repository.enqueue_many(conn, [NewJob(task="sched.noop", queue="q", group=g) for g in groups])
                    deadline = time.monotonic() + seconds
                    while time.monotonic() < deadline:
                        if conn.row("SELECT count(*) FROM sched_jobs_all WHERE state = 'succeeded'") == (len(groups),):
                            break
                        time.sleep(0.1)
                finally:
                    worker.terminate()
                    worker.wait(timeout=60)
                done, took = conn.row(
                    "SELECT count(*), coalesce(extract(epoch FROM max(finished_at) - min(started_at))::float8, 0) "
                    "FROM sched_jobs_all WHERE state = 'succeeded'"
                )  # type: ignore[misc]
        finally:
            db.drop_database(admin, name)
    return done, done / took if took else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("SCHED_DATABASE_URL") or make_conninfo(host="127.0.0.1"))
    parser.add_argument("--seconds", type=float, default=8.0, help="Longest run of one condition.")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    rows = []
    for name, limit, groups, ideal in CONDITIONS:
        done, rate = measure(options.dsn, limit, groups, options.seconds)
        rows.append({"condition": name, "jobs": len(groups), "succeeded": done, "per_s": round(rate), "limit": ideal})
        print(f"{name}: {done} of {len(groups)} jobs, {rate:,.0f} jobs/s", file=sys.stderr)
    if options.json:
        print(json.dumps(rows))
        return
    print(f"{'condition':<45} {'jobs':>12} {'drain':>12} {'the limit':>10}")
    for row in rows:
        limit = f"{row['limit']:,.0f} /s" if row["limit"] else "-"
        jobs = f"{row['succeeded']}/{row['jobs']}"
        print(f"{row['condition']:<45} {jobs:>12} {row['per_s']:>10,} /s {limit:>10}")


if __name__ == "__main__":
    main()
