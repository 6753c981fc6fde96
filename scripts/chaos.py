"""Chaos run: short jobs, several worker processes, one SIGKILLed at random every few seconds and replaced, and
optionally a PostgreSQL restart in the middle; then the figures that say whether anything was lost, run twice
beyond what the kills explain, or left behind.

Three workers, one SIGKILLed every 1.5 s, and a PostgreSQL restart (on a private server this script starts and
removes, so nothing else is disturbed):

    python scripts/chaos.py --workers 3 --kill-every 1.5s --restart

Against a server of your own (a database is created on it for the run and dropped afterwards; --restart needs
the private server, since this script cannot restart yours):

    python scripts/chaos.py --dsn postgresql://root@127.0.0.1:5432/postgres --jobs 50000 --workers 4

Exit code 0 when every check holds, 1 otherwise. The scenario is the one the chaos test runs
(tests/chaos/scenario.py), with every parameter open."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "chaos"))

import psycopg  # noqa: E402
from private_server import create_database, private_server  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from scenario import ChaosFigures, run_chaos  # noqa: E402

from pgsched import db, migrate  # noqa: E402
from pgsched.durations import parse_duration  # noqa: E402


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a server to use instead of a private one (admin DSN)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs to run [20000]")
    parser.add_argument("--workers", type=int, default=4, help="worker processes [4]")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrency of each worker [20]")
    parser.add_argument(
        "--kill-every",
        default="2s",
        help="SIGKILL a random worker this often, and at least once by 20/45/70%% of the work [2s]",
    )
    parser.add_argument("--stale-after", default="2s", help="the workers' --stale-after [2s]")
    parser.add_argument("--job-seconds", type=float, default=0.0, help="how long each job sleeps [0]")
    parser.add_argument("--restart", action="store_true", help="restart PostgreSQL once (private server only)")
    parser.add_argument("--restart-at", type=float, default=0.4, help="fraction of jobs done at the restart [0.4]")
    parser.add_argument("--timeout", default="30m", help="give up after this long [30m]")
    parser.add_argument("--logs", type=Path, help="keep the worker logs in this folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--seed", type=int, help="seed of the random choice of victims")
    args = parser.parse_args()
    if args.restart and args.dsn:
        parser.error("--restart needs the private server: leave out --dsn")
    return args


def check(figures: ChaosFigures) -> list[str]:
    """The checks the chaos test makes, as a list of what failed."""
    failed = []
    if figures.states != {"succeeded": figures.jobs}:
        failed.append(f"not every job succeeded: {figures.states}")
    if figures.jobs_never_run:
        failed.append(f"{figures.jobs_never_run} job(s) never ran")
    if figures.duplicates > figures.duplicate_bound:
        failed.append(f"{figures.duplicates} duplicate executions, more than the bound {figures.duplicate_bound}")
    if any(code != 0 for code in figures.survivors_exit_codes):
        failed.append(f"surviving workers exited with {figures.survivors_exit_codes}")
    if figures.worker_rows_after_reap:
        failed.append(f"{figures.worker_rows_after_reap} worker row(s) left after sched reap")
    if figures.max_reconnect_attempts > 10:
        failed.append(f"a reconnection took {figures.max_reconnect_attempts} attempts")
    if figures.errors_logged:
        failed.append(f"errors logged: {figures.errors_logged[:3]}")
    return failed


def main() -> int:
    args = _args()
    params = {
        "jobs": args.jobs,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "kill_interval": parse_duration(args.kill_every, what="kill interval"),
        "stale_after": args.stale_after,
        "job_seconds": args.job_seconds,
        "restart_at": args.restart_at,
        "timeout": parse_duration(args.timeout, what="timeout"),
        "log_dir": args.logs,
        "seed": args.seed,
        "progress": lambda line: print(line, flush=True),
    }
    if args.dsn:
        name = f"sched_chaos_{os.getpid()}"
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            dsn = make_conninfo(args.dsn, dbname=name)
            with db.connect(dsn) as conn:
                migrate.apply(conn)
            figures = run_chaos(dsn, **params)
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        with private_server() as server:
            print(f"private PostgreSQL on 127.0.0.1:{server.port}", flush=True)
            figures = run_chaos(create_database(server), restart=server.restart if args.restart else None, **params)
    print(figures.summary())
    print(
        f"jobs {figures.jobs}, kills {figures.kills}, executions {figures.executions},"
        f" duplicates {figures.duplicates}, duration {figures.duration_s:.1f}s"
    )
    if args.json:
        args.json.write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    failed = check(figures)
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
