"""Fixtures of the worker tests: the handler module in a temporary folder, the ``executions`` side table,
worker processes that are always killed at the end of a test, bulk enqueueing, and ``async def`` tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import APP_MODULE, APP_SOURCE, WorkerProcess

from pgsched import db, repository
from pgsched.models import NewJob


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests (those that drive an in-process worker, see inprocess.py) on a fresh event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A folder holding the handler module ``workerapp``."""
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return folder


@pytest.fixture
def executions(dsn: str) -> str:
    """Create the side table the handlers write to; returns the test database's DSN."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE executions (job_id bigint NOT NULL, attempt int NOT NULL, phase text NOT NULL,"
            " pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " PRIMARY KEY (job_id, attempt, phase))"
        )
    return dsn


@pytest.fixture
def start_worker(dsn: str, app_dir: Path, executions: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``python -m pgsched worker --app workerapp ARGS``; every process is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, command: list[str] | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        # The handler module's folder goes first; a PYTHONPATH already set (a source checkout) stays after it.
        python_path = os.pathsep.join(filter(None, [str(app_dir), os.environ.get("PYTHONPATH")]))
        full_env = {**os.environ, "SCHED_DATABASE_URL": dsn, "PYTHONPATH": python_path, **(env or {})}
        full_env.pop("SCHED_APP", None)
        argv = command or [sys.executable, "-m", "pgsched", "worker"]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [*argv, "--app", APP_MODULE, *args],
                cwd=app_dir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so the test can end a supervisor's children too
            )
        process = WorkerProcess(popen, log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.alive():
            os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait(timeout=10)
        else:
            # A supervisor's children would outlive it in its group; end whatever the group still holds.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def add_jobs(conn: db.Connection) -> Callable[..., list[int]]:
    """Enqueue ``count`` jobs of ``task`` in one statement (one NOTIFY); returns their ids."""

    def add(task: str, count: int = 1, payload: str = "{}", **fields: Any) -> list[int]:
        jobs = [NewJob(task=task, payload_json=payload, **fields) for _ in range(count)]
        return [e.id for e in repository.enqueue_many(conn, jobs)]

    return add
