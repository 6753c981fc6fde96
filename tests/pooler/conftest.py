"""Fixtures of the pooler tests: a PgBouncer in transaction mode (a pool of 4 server connections, fewer than the
clients the tests open) in front of each test's database, and the worker tests' process helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "worker"))

import pgbouncer as pgbouncer_module


@pytest.fixture
def pgbouncer(server_dsn: str) -> Iterator[pgbouncer_module.PgBouncer]:
    """A PgBouncer in transaction mode with 4 server connections per database, stopped after the test."""
    why_not = pgbouncer_module.available()
    if why_not is not None:
        pytest.skip(why_not)
    bouncer = pgbouncer_module.PgBouncer(server_dsn, pool_size=4).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def pooled_dsn(dsn: str, pgbouncer: pgbouncer_module.PgBouncer) -> str:
    """The test database through the PgBouncer."""
    return pgbouncer.url(dsn)


# Handlers of the pooler tests. They record each run on a direct connection to the test database (the side table
# is the test's, not sched's): "note" records each run, "fail_once" fails its first run, "hold" sleeps.
APP_SOURCE = """
import os
import time

import psycopg

from pgsched.worker import Fail, task

DIRECT = os.environ["POOLER_TEST_DIRECT_URL"]
_conn = None


def note(ctx):
    # Records this run; returns how many runs of the job there were before it.
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(DIRECT, autocommit=True)
    return _conn.execute(
        "WITH earlier AS (SELECT count(*) AS n FROM executions WHERE job_id = %(id)s)"
        " INSERT INTO executions (job_id, pid) VALUES (%(id)s, %(pid)s) RETURNING (SELECT n FROM earlier)",
        {"id": ctx.job_id, "pid": os.getpid()},
    ).fetchone()[0]


@task("note")
def run_note(payload, ctx):
    note(ctx)


@task("fail_once")
def fail_once(payload, ctx):
    if note(ctx) == 0:
        raise Fail("the first run fails on purpose")


@task("hold")
def hold(payload, ctx):
    note(ctx)
    time.sleep(payload.get("seconds", 30))
"""


@pytest.fixture
def pooler_app(tmp_path: Path, dsn: str) -> Path:
    """The handler module ``poolerapp`` in a folder, and the ``executions`` table it writes to."""
    import psycopg

    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "poolerapp.py").write_text(APP_SOURCE)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE executions (job_id bigint NOT NULL, pid int NOT NULL,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    return folder


@pytest.fixture
def start_pooled_worker(pooler_app: Path, dsn: str, pooled_dsn: str, tmp_path: Path):
    """Start ``sched worker --app poolerapp ARGS`` with SCHED_DATABASE_URL through the PgBouncer (or ``url``);
    every process is killed at the end of the test."""
    import os
    import signal
    import subprocess

    from harness import WorkerProcess

    started: list[WorkerProcess] = []

    def start(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        python_path = os.pathsep.join(filter(None, [str(pooler_app), os.environ.get("PYTHONPATH")]))
        inherited = {k: v for k, v in os.environ.items() if k not in ("SCHED_APP", "SCHED_LISTEN_URL")}
        full_env = {
            **inherited,
            "SCHED_DATABASE_URL": url or pooled_dsn,
            "POOLER_TEST_DIRECT_URL": dsn,
            "PYTHONPATH": python_path,
            **(env or {}),
        }
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pgsched", "worker", "--app", "poolerapp", *args],
                cwd=pooler_app,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = WorkerProcess(popen, log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.alive():
            os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait(timeout=10)
