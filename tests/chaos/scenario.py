"""The chaos scenario shared by the chaos tests and ``scripts/chaos.py``: many short jobs, several worker
processes, one SIGKILLed at random every few seconds and replaced, and optionally a PostgreSQL restart in the
middle; then the figures that say whether anything was lost, run twice, or left behind.

Handlers note every execution in a side table, ``chaos_executions``, keyed by (job, attempt): every claim is a
new attempt, so a job run twice leaves two rows, while a handler's own insert retried after a lost connection
cannot count twice."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgsched import db, repository
from pgsched.models import NewJob

APP_MODULE = "chaosapp"

APP_SOURCE = '''
"""Handlers of the chaos runs: each notes its execution in chaos_executions with its own connection."""
import asyncio
import os

import psycopg

from pgsched.worker import task

DSN = os.environ["SCHED_DATABASE_URL"]
_conn = None
_lock = asyncio.Lock()


async def note(ctx, phase="run"):
    global _conn
    # One connection per process, serialised: twenty handlers reconnecting at once after a restart would only
    # make the storm worse. A lost connection is retried; the key makes a repeated insert harmless.
    for _ in range(1200):
        try:
            async with _lock:
                if _conn is None or _conn.closed or _conn.broken:
                    _conn = await psycopg.AsyncConnection.connect(
                        DSN, autocommit=True, application_name="chaos-handler", connect_timeout=5
                    )
                await _conn.execute(
                    "INSERT INTO chaos_executions (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (ctx.job_id, ctx.attempt, phase, os.getpid()),
                )
            return
        except psycopg.OperationalError:
            _conn = None
            await asyncio.sleep(0.1)
    raise RuntimeError("could not record the execution")


@task("chaos.record")
async def record(payload, ctx):
    if payload.get("seconds"):
        await asyncio.sleep(payload["seconds"])
    await note(ctx)


@task("chaos.progress")
async def progress(payload, ctx):
    deadline = asyncio.get_running_loop().time() + payload.get("seconds", 5)
    i = 0
    while asyncio.get_running_loop().time() < deadline:
        i += 1
        ctx.progress({"i": i})
        await asyncio.sleep(0.05)
    await note(ctx)


@task("chaos.hang", timeout=1, max_attempts=1)
async def hang(payload, ctx):
    await note(ctx, "start")
    await asyncio.sleep(60)


@task("chaos.limited", timeout=30)
async def limited(payload, ctx):
    await note(ctx)


@task("chaos.sleep")
async def sleep(payload, ctx):
    await note(ctx, "start")
    await asyncio.sleep(payload.get("seconds", 6))
    await note(ctx, "end")
    return {"pid": os.getpid(), "attempt": ctx.attempt}
'''

EXECUTIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS chaos_executions (job_id bigint NOT NULL, attempt int NOT NULL,"
    " phase text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " PRIMARY KEY (job_id, attempt, phase))"
)


def write_app(folder: Path) -> Path:
    """Write the handler module into ``folder`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return folder


def query(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement on a short-lived connection and return its rows."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    return query(dsn, sql, params)[0][0]


def patient_query(dsn: str, sql: str, params: Any = None, timeout: float = 30) -> list[tuple]:
    """Like ``query``, retrying while the server is restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return query(dsn, sql, params)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def prepare(dsn: str) -> None:
    """Create the side table the handlers write to."""
    query(dsn, EXECUTIONS_DDL)


def enqueue(dsn: str, task: str, count: int, payload: str = "{}", **fields: Any) -> list[int]:
    """Add ``count`` jobs in bulk; returns their ids."""
    ids: list[int] = []
    with db.connect(dsn) as conn:
        for start in range(0, count, 5000):
            jobs = [NewJob(task=task, payload_json=payload, **fields) for _ in range(min(5000, count - start))]
            ids += [e.id for e in repository.enqueue_many(conn, jobs)]
    return ids


class WorkerProcess:
    """A ``python -m pgsched worker`` process logging to a file."""

    def __init__(self, popen: subprocess.Popen, log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


class WorkerFleet:
    """Starts worker processes with the chaos handlers; ``close()`` kills whatever still runs."""

    def __init__(self, dsn: str, app_dir: Path, log_dir: Path, args: Sequence[str] = ()) -> None:
        self.dsn = dsn
        self.app_dir = app_dir
        self.log_dir = log_dir
        self.args = list(args)
        self.started: list[WorkerProcess] = []

    def start(self, *extra: str, prefix: Sequence[str] = (), dsn: str | None = None) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{len(self.started)}.log"
        env = {**os.environ, "SCHED_DATABASE_URL": dsn or self.dsn, "PYTHONPATH": str(self.app_dir)}
        env.pop("SCHED_APP", None)
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [*prefix, sys.executable, "-m", "pgsched", "worker", "--app", APP_MODULE, *self.args, *extra],
                cwd=self.app_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = WorkerProcess(popen, log_path)
        self.started.append(process)
        return process

    def alive(self) -> list[WorkerProcess]:
        return [p for p in self.started if p.alive()]

    def close(self) -> None:
        for process in self.started:
            if process.alive():
                process.kill()


def run_cli(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m pgsched ARGS`` against ``dsn``."""
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        env={**os.environ, "SCHED_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )


@dataclass
class ChaosFigures:
    """What a chaos run did and found."""

    jobs: int = 0
    workers: int = 0
    concurrency: int = 0
    kill_interval_s: float = 0.0
    kills: int = 0
    restarts: int = 0
    restart_s: float = 0.0
    duration_s: float = 0.0
    executions: int = 0
    duplicates: int = 0
    orphaned_at_kills: int = 0
    running_at_restart: int = 0
    duplicate_bound: int = 0
    states: dict[str, int] = field(default_factory=dict)
    jobs_never_run: int = 0
    fenced_outcomes: int = 0
    connection_lost_lines: int = 0
    connection_restored_lines: int = 0
    max_reconnect_attempts: int = 0
    max_log_lines: int = 0
    survivors_exit_codes: list[int] = field(default_factory=list)
    worker_rows_after_reap: int = -1
    errors_logged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"chaos: {self.jobs} jobs, {self.workers} workers x {self.concurrency}, {self.kills} SIGKILLs"
            f" (every {self.kill_interval_s:g}s), {self.restarts} PostgreSQL restart(s)"
            f" ({self.restart_s:.2f}s), {self.executions} executions, {self.duplicates} duplicates"
            f" (bound {self.duplicate_bound}: {self.orphaned_at_kills} orphaned by kills"
            f" + {self.running_at_restart} running at restart + restart allowance), {self.fenced_outcomes}"
            f" fenced outcomes, reconnects: {self.connection_lost_lines} lost/{self.connection_restored_lines}"
            f" restored lines (max {self.max_reconnect_attempts} attempts), duration {self.duration_s:.1f}s"
        )


def run_chaos(
    dsn: str,
    *,
    jobs: int = 20_000,
    workers: int = 4,
    concurrency: int = 20,
    kill_interval: float = 2.0,
    stale_after: str = "2s",
    restart: Callable[[], float] | None = None,
    restart_at: float = 0.4,
    job_seconds: float = 0.0,
    max_attempts: int = 25,
    timeout: float = 600.0,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int | None = None,
) -> ChaosFigures:
    """Run the scenario against ``dsn`` (a migrated database) and return its figures; ``restart`` restarts
    the server once, when ``restart_at`` of the jobs are done. Raises TimeoutError if the jobs never finish."""
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    figures = ChaosFigures(jobs=jobs, workers=workers, concurrency=concurrency, kill_interval_s=kill_interval)
    prepare(dsn)
    payload = f'{{"seconds": {job_seconds}}}' if job_seconds else "{}"
    # A job may be orphaned by several kills in a row; a generous attempt budget keeps that from failing it,
    # which is not what this run is about (the crash-recovery tests cover attempts running out).
    enqueue(dsn, "chaos.record", jobs, payload, max_attempts=max_attempts)
    say(f"enqueued {jobs} jobs")
    with tempfile.TemporaryDirectory(prefix="sched-chaos-") as tmp:
        app_dir = write_app(Path(tmp) / "app")
        logs = log_dir or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        fleet = WorkerFleet(
            dsn,
            app_dir,
            logs,
            ["--concurrency", str(concurrency), "--stale-after", stale_after, "--poll-interval", "0.5s"],
        )
        try:
            _drive(dsn, fleet, figures, rng, workers, kill_interval, restart, restart_at, timeout, say)
            _finish(dsn, fleet, figures, stale_after)
        finally:
            fleet.close()
    return figures


KILL_BY = (0.2, 0.45, 0.7)


def _unfinished(dsn: str) -> int:
    return patient_query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state <> 'succeeded'")[0][0]


def _drive(
    dsn: str,
    fleet: WorkerFleet,
    figures: ChaosFigures,
    rng: random.Random,
    workers: int,
    kill_interval: float,
    restart: Callable[[], float] | None,
    restart_at: float,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    host = socket.gethostname()
    started = time.monotonic()
    for _ in range(workers):
        fleet.start()
    next_kill = started + kill_interval
    restart_pending = restart is not None
    while True:
        left = _unfinished(dsn)
        if left == 0:
            break
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(f"{left} job(s) unfinished after {timeout:g}s")
        done = 1 - left / figures.jobs
        if restart_pending and done >= restart_at and next_kill - now > kill_interval / 4:
            assert restart is not None
            restart_pending = False
            figures.running_at_restart = scalar(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state = 'running'")
            figures.restart_s = restart()
            figures.restarts += 1
            say(f"restarted PostgreSQL in {figures.restart_s:.2f}s with {figures.running_at_restart} jobs running")
            continue
        # A kill every kill_interval; and a run that goes faster than that still gets one kill by each share of
        # the work in KILL_BY, so the kills land while there is work left to disturb.
        if now >= next_kill or figures.kills < sum(done >= share for share in KILL_BY):
            next_kill = max(next_kill, now) + kill_interval
            victim = rng.choice(fleet.alive())
            victim.kill()
            figures.kills += 1
            # The dead worker's rows stay 'running' until a reaper finds its heartbeat stale: count them now.
            # Each is at most one extra execution (it either ran and its outcome was not flushed, or never ran).
            orphaned = patient_query(
                dsn,
                "SELECT count(*) FROM sched_jobs_all j JOIN sched_workers w ON w.id = j.worker_id"
                " WHERE j.state = 'running' AND w.pid = %s AND w.host = %s",
                (victim.pid, host),
            )[0][0]
            figures.orphaned_at_kills += orphaned
            fleet.start()
            say(f"kill {figures.kills}: pid {victim.pid} held {orphaned} job(s); {left} left")
        time.sleep(min(0.2, max(0.0, next_kill - time.monotonic())))
    figures.duration_s = time.monotonic() - started


def _finish(dsn: str, fleet: WorkerFleet, figures: ChaosFigures, stale_after: str) -> None:
    survivors = fleet.alive()
    for process in survivors:
        # A replacement started a moment ago may still be importing; a SIGTERM before its handlers are in
        # place would end it like any unprepared process. Stop it once it says it runs.
        deadline = time.monotonic() + 30
        while " started: " not in process.log() and process.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGTERM)
    for process in survivors:
        try:
            figures.survivors_exit_codes.append(process.popen.wait(timeout=40))
        except subprocess.TimeoutExpired:
            figures.survivors_exit_codes.append(-999)
    # Worker rows left by the last kills go once their heartbeat is stale.
    time.sleep(2.5)
    reaped = run_cli(dsn, "reap")
    if reaped.returncode != 0:
        figures.errors_logged.append(f"sched reap: {reaped.stderr.strip()}")
    figures.worker_rows_after_reap = scalar(dsn, "SELECT count(*) FROM sched_workers")
    figures.states = dict(query(dsn, "SELECT state::text, count(*) FROM sched_jobs_all GROUP BY 1"))
    figures.executions = scalar(dsn, "SELECT count(*) FROM chaos_executions")
    figures.duplicates = figures.executions - scalar(dsn, "SELECT count(DISTINCT job_id) FROM chaos_executions")
    figures.jobs_never_run = scalar(
        dsn,
        "SELECT count(*) FROM sched_jobs_all j"
        " WHERE NOT EXISTS (SELECT 1 FROM chaos_executions e WHERE e.job_id = j.id)",
    )
    # The bound on extra executions. A SIGKILL can make each job its worker held run once more: the jobs it had
    # claimed (running or waiting for a slot) and those it had run but whose outcome was still unflushed are all
    # still 'running' under its id, which is what orphaned_at_kills counted right after each kill. A restart
    # drops every connection; if a worker's heartbeat went stale meanwhile, a reaper may requeue what it held
    # then (running_at_restart) and what it claimed after reconnecting but before its next beat (at most its
    # free slots: concurrency each).
    restart_allowance = (figures.running_at_restart + figures.workers * figures.concurrency) * figures.restarts
    figures.duplicate_bound = figures.orphaned_at_kills + restart_allowance
    # "connection (role) lost" when a connection fails, "reconnecting (role) failed" when reconnecting does;
    # only while working: closing the connections at a clean exit is no loss.
    lost_re = re.compile(r"connection \(\w+\) lost|reconnecting \(\w+\) failed")
    for process in fleet.started:
        log = process.log()
        lines = log.splitlines()
        figures.max_log_lines = max(figures.max_log_lines, len(lines))
        working, _, _ = log.partition("shutting down gracefully")
        figures.connection_lost_lines += len(lost_re.findall(working))
        attempts = [int(n) for n in re.findall(r"restored after (\d+) attempt", log)]
        figures.connection_restored_lines += len(attempts)
        figures.max_reconnect_attempts = max([figures.max_reconnect_attempts, *attempts])
        figures.fenced_outcomes += sum(int(n) for n in re.findall(r"(\d+) late outcome\(s\) fenced off", log))
        figures.errors_logged += [line for line in lines if " ERROR " in line or "Traceback" in line][:5]
