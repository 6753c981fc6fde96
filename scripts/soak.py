"""Soak test: a steady load for a long while, to show that a worker's memory stays flat and that the jobs table
and its indexes stay bounded when cleanup runs.

A producer adds --rate jobs per second (the built-in ``sched.noop``) for --duration, one worker runs them,
``sched cleanup --older-than 30s`` runs every 30 s, and every 10 s the script samples the worker's resident
memory (from /proc), the size of ``sched_jobs`` (heap, and heap plus indexes and TOAST), the size of each of its
indexes, and the ready, running and finished counts. It prints a table as it goes, a verdict at the end, and
writes every sample as JSON.

The run uses a database of its own, created on the server of --dsn (default: SCHED_DATABASE_URL) and dropped
at the end (--keep keeps it), or on a private server this script starts and removes (--private). A queue table
stays bounded only if it is vacuumed: where autovacuum is off, each cleanup is followed by ``VACUUM sched_jobs``,
as an operator's cron job would do (--vacuum decides). Ten minutes at 500 jobs/s:

    python scripts/soak.py --dsn postgresql://root@127.0.0.1:5432/postgres --rate 500 --duration 10m \\
        --json soak.json

Not part of the test suite: it takes as long as you ask it to."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsched import db, migrate, repository
from pgsched.durations import parse_duration
from pgsched.models import NewJob

PRODUCER_TICK = 0.1


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("SCHED_DATABASE_URL"), help="server to use (admin DSN)")
    parser.add_argument("--rate", type=float, default=500, help="jobs added per second [500]")
    parser.add_argument("--duration", default="10m", help="how long to run [10m]")
    parser.add_argument("--sample-every", default="10s", help="sampling interval [10s]")
    parser.add_argument("--cleanup-every", default="30s", help="how often sched cleanup runs [30s]")
    parser.add_argument("--older-than", default="30s", help="cleanup retention [30s]")
    parser.add_argument("--concurrency", type=int, default=20, help="the worker's concurrency [20]")
    parser.add_argument("--json", type=Path, default=Path("soak.json"), help="where to write the samples")
    parser.add_argument("--keep", action="store_true", help="keep the soak database afterwards")
    parser.add_argument("--private", action="store_true", help="use a private server (autovacuum on)")
    parser.add_argument(
        "--vacuum",
        choices=["auto", "always", "never"],
        default="auto",
        help="VACUUM sched_jobs after each cleanup: auto does when the server's autovacuum is off [auto]",
    )
    args = parser.parse_args()
    if not args.dsn and not args.private:
        parser.error("give --dsn, set SCHED_DATABASE_URL, or use --private")
    return args


class Producer(threading.Thread):
    """Adds jobs at a steady rate, in one bulk insert per tick, catching up if a tick ran late."""

    def __init__(self, dsn: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rate = rate
        self.added = 0
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with db.connect(self.dsn) as conn:
            while not self.stop.wait(PRODUCER_TICK):
                due = int((time.monotonic() - started) * self.rate) - self.added
                if due <= 0:
                    continue
                try:
                    repository.enqueue_many(conn, [NewJob(task="sched.noop", payload_json="{}")] * due)
                    self.added += due
                except Exception:  # keep the load steady through a hiccup; the count shows it
                    self.errors += 1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sample(dsn: str, worker_pid: int, producer: Producer, started: float, cleanups: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        counts = c.execute(
            "SELECT count(*) FILTER (WHERE state = 'queued' AND run_at <= now()),"
            " count(*) FILTER (WHERE state = 'running'),"
            " count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled')),"
            " pg_total_relation_size('sched_jobs'), pg_relation_size('sched_jobs')"
            " FROM sched_jobs"
        ).fetchone()
        indexes = dict(
            c.execute(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
                " WHERE indrelid = 'sched_jobs'::regclass ORDER BY 1"
            ).fetchall()
        )
    assert counts is not None
    return {
        "t_s": round(time.monotonic() - started, 1),
        "worker_rss_kib": _rss_kib(worker_pid),
        "added": producer.added,
        "ready": counts[0],
        "running": counts[1],
        "finished": counts[2],
        "total_bytes": counts[3],
        "heap_bytes": counts[4],
        "index_bytes": indexes,
        "cleanups": cleanups,
    }


def _mib(n: float) -> str:
    return f"{n / 1048576:.1f}"


def _print_row(s: dict[str, Any]) -> None:
    print(
        f"{s['t_s']:>7.0f} {s['worker_rss_kib'] / 1024:>8.1f} {s['added']:>9} {s['ready']:>7} {s['running']:>7}"
        f" {s['finished']:>9} {_mib(s['heap_bytes']):>8} {_mib(sum(s['index_bytes'].values())):>9}"
        f" {_mib(s['total_bytes']):>9}",
        flush=True,
    )


def _verdict(samples: list[dict[str, Any]], warm_up: float) -> dict[str, Any]:
    """Compare the second half of the steady state with the first: flat memory and bounded sizes grow little.
    The steady state starts once cleanup has had time to delete the first finished jobs (``warm_up``)."""
    steady = [s for s in samples if s["t_s"] >= warm_up] or samples
    half = len(steady) // 2
    warm, late = steady[: max(1, half)], steady[half:] or steady[-1:]

    def peak(part: list[dict[str, Any]], key: str) -> float:
        return max(float(s[key]) for s in part)

    rss_growth = peak(late, "worker_rss_kib") / max(1.0, peak(warm, "worker_rss_kib"))
    size_growth = peak(late, "total_bytes") / max(1.0, peak(warm, "total_bytes"))
    return {
        "worker_rss_mib_first_half_peak": round(peak(warm, "worker_rss_kib") / 1024, 1),
        "worker_rss_mib_second_half_peak": round(peak(late, "worker_rss_kib") / 1024, 1),
        "worker_rss_growth": round(rss_growth, 3),
        "table_total_mib_first_half_peak": round(peak(warm, "total_bytes") / 1048576, 1),
        "table_total_mib_second_half_peak": round(peak(late, "total_bytes") / 1048576, 1),
        "table_size_growth": round(size_growth, 3),
        "memory_flat": rss_growth <= 1.10,
        "sizes_bounded": size_growth <= 1.25,
    }


class Maintenance(threading.Thread):
    """Runs ``sched cleanup`` every interval (and ``VACUUM sched_jobs`` after it, if asked), off the sampler's loop."""

    def __init__(self, dsn: str, every: float, older_than: str, vacuum: bool) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.every = every
        self.older_than = older_than
        self.vacuum = vacuum
        self.cleanups = 0
        self.failures = 0
        self.deleted = 0
        self.vacuums = 0
        self.stop = threading.Event()

    def run(self) -> None:
        env = {**os.environ, "SCHED_DATABASE_URL": self.dsn}
        while not self.stop.wait(self.every):
            done = subprocess.run(
                [sys.executable, "-m", "pgsched", "cleanup", "--older-than", self.older_than, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                self.failures += 1
                continue
            self.cleanups += 1
            self.deleted += json.loads(done.stdout)["deleted"]
            if self.vacuum:
                with psycopg.connect(self.dsn, autocommit=True) as c:
                    c.execute("VACUUM sched_jobs")
                self.vacuums += 1


def main() -> int:
    args = _args()
    # A plain SIGTERM ends the run like Ctrl-C, so the soak database and the worker are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.private:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "chaos"))
        from private_server import private_server

        with private_server() as server:
            return soak(args, server.dsn(), f"a private server on port {server.port}")
    return soak(args, args.dsn, conninfo_to_dict(args.dsn).get("host", "local socket"))


def soak(args: argparse.Namespace, admin_dsn: str, where: str) -> int:
    """Run the soak against the server of ``admin_dsn``; returns the exit code."""
    duration = parse_duration(args.duration, what="duration")
    sample_every = parse_duration(args.sample_every, what="sample interval")
    cleanup_every = parse_duration(args.cleanup_every, what="cleanup interval")
    name = f"sched_soak_{os.getpid()}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        autovacuum = admin.execute("SELECT current_setting('autovacuum')::bool").fetchone()[0]  # type: ignore[index]
        admin.execute(f'CREATE DATABASE "{name}"')
    vacuum = args.vacuum == "always" or (args.vacuum == "auto" and not autovacuum)
    dsn = make_conninfo(admin_dsn, dbname=name)
    with db.connect(dsn) as conn:
        migrate.apply(conn)
    log_path = Path(tempfile.gettempdir()) / f"{name}-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pgsched", "worker", "--concurrency", str(args.concurrency)],
            env={**os.environ, "SCHED_DATABASE_URL": dsn},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    producer = Producer(dsn, args.rate)
    maintenance = Maintenance(dsn, cleanup_every, args.older_than, vacuum)
    samples: list[dict[str, Any]] = []
    print(
        f"soak: {args.rate:g} jobs/s for {args.duration} on {where} (database {name}), one worker"
        f" (concurrency {args.concurrency}), cleanup --older-than {args.older_than} every {args.cleanup_every};"
        f" autovacuum {'on' if autovacuum else 'off'}{', VACUUM after each cleanup' if vacuum else ''}",
        flush=True,
    )
    print(
        f"{'t (s)':>7} {'RSS MiB':>8} {'added':>9} {'ready':>7} {'running':>7} {'finished':>9} {'heap MiB':>8}"
        f" {'index MiB':>9} {'total MiB':>9}",
        flush=True,
    )
    started = time.monotonic()
    producer.start()
    maintenance.start()
    next_sample = started
    try:
        while time.monotonic() - started < duration:
            if worker.poll() is not None:
                print(f"the worker exited with {worker.returncode}; log: {log_path}", file=sys.stderr)
                return 1
            samples.append(_sample(dsn, worker.pid, producer, started, maintenance.cleanups))
            _print_row(samples[-1])
            next_sample += sample_every
            time.sleep(max(0.0, min(next_sample, started + duration) - time.monotonic()))
        producer.stop.set()
        producer.join()
        samples.append(_sample(dsn, worker.pid, producer, started, maintenance.cleanups))
        _print_row(samples[-1])
    finally:
        producer.stop.set()
        maintenance.stop.set()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        maintenance.join(timeout=60)
        if not args.keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # Finished rows live up to --older-than plus one cleanup interval; vacuum needs a moment more to reuse space.
    verdict = _verdict(samples, warm_up=2 * (cleanup_every + parse_duration(args.older_than, what="retention")))
    summary = {
        "rate": args.rate,
        "duration_s": round(time.monotonic() - started, 1),
        "autovacuum": autovacuum,
        "vacuum_after_cleanup": vacuum,
        "jobs_added": producer.added,
        "producer_errors": producer.errors,
        "cleanups": maintenance.cleanups,
        "cleanup_failures": maintenance.failures,
        "deleted_by_cleanup": maintenance.deleted,
        "vacuums": maintenance.vacuums,
        "worker_exit_code": worker.returncode,
        "final_indexes_bytes": samples[-1]["index_bytes"],
        **verdict,
    }
    args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(
        f"worker memory {'flat' if verdict['memory_flat'] else 'GREW'}"
        f" (peak {verdict['worker_rss_mib_first_half_peak']} MiB, then {verdict['worker_rss_mib_second_half_peak']});"
        f" jobs table {'bounded' if verdict['sizes_bounded'] else 'GREW'}"
        f" (peak {verdict['table_total_mib_first_half_peak']} MiB, then {verdict['table_total_mib_second_half_peak']})"
    )
    return 0 if verdict["memory_flat"] and verdict["sizes_bounded"] else 2


if __name__ == "__main__":
    sys.exit(main())
