"""Shared by the worker tests: the handler module, process handles and database look-ups.

Worker tests run real worker processes (``python -m pgsched worker``) against the test's database, with a
handler module written to a temporary folder. Handlers note each execution in a side table, ``executions``,
with their own connections, so a test can count how often each job really ran."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

APP_MODULE = "workerapp"

# Handlers used across the worker tests. `note` writes one row per (job, attempt, phase); the unique key makes
# a retried insert after a lost connection harmless and cannot hide a second run (every claim is a new attempt).
APP_SOURCE = """
import asyncio
import os
import signal
import threading
import time

import psycopg

from pgsched.worker import Fail, Retry, task

DSN = os.environ["SCHED_DATABASE_URL"]
_local = threading.local()


def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True, application_name="test-handler")
    return conn


def note(ctx, phase="run"):
    deadline = time.monotonic() + 30
    while True:
        try:
            _conn().execute(
                "INSERT INTO executions (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (ctx.job_id, ctx.attempt, phase, os.getpid()),
            )
            return
        except psycopg.OperationalError:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def seen(job_id, attempt, phase):
    row = _conn().execute(
        "SELECT 1 FROM executions WHERE job_id = %s AND attempt = %s AND phase = %s", (job_id, attempt, phase)
    ).fetchone()
    return row is not None


async def anote(ctx, phase="run"):
    await asyncio.to_thread(note, ctx, phase)


@task("count")
async def count(payload, ctx):
    await anote(ctx)


@task("count_sync")
def count_sync(payload, ctx):
    note(ctx)


@task("sleepy")
async def sleepy(payload, ctx):
    await anote(ctx, "start")
    await asyncio.sleep(payload.get("seconds", 2))
    await anote(ctx, "end")


@task("sleepy_sync")
def sleepy_sync(payload, ctx):
    note(ctx, "start")
    time.sleep(payload.get("seconds", 2))
    note(ctx, "end")


@task("hang_first")
async def hang_first(payload, ctx):
    await anote(ctx, "start")
    if ctx.attempt == 1:
        await asyncio.sleep(120)
    await anote(ctx, "end")


@task("suicide")
def suicide(payload, ctx):
    note(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@task("slow_async", timeout=1, backoff=1)
async def slow_async(payload, ctx):
    await anote(ctx, "start")
    if ctx.attempt == 1 or payload.get("always"):
        await asyncio.sleep(60)
    await anote(ctx, "end")
    return {"attempt": ctx.attempt}


@task("late_sync", timeout=2, backoff=0.1)
def late_sync(payload, ctx):
    note(ctx, "start")
    if ctx.attempt == 1:
        # Outlive the timeout until the retry runs, then report progress and return: both must be fenced off.
        deadline = time.monotonic() + 20
        while not seen(ctx.job_id, 2, "start") and time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.progress({"from": 1})
        note(ctx, "late-end")
        return {"from": 1}
    deadline = time.monotonic() + 1.5
    while not seen(ctx.job_id, 1, "late-end") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # long enough for the supervisor to try the late progress write while this attempt runs
    note(ctx, "end")
    return {"from": 2}


@task("plain_sync")
def plain_sync(payload, ctx):
    note(ctx, "start")
    time.sleep(payload.get("seconds", 0))
    note(ctx, "end")
    return {"slept": payload.get("seconds", 0)}


@task("not_json")
def not_json(payload, ctx):
    note(ctx)
    return {"when": {1, 2}}


@task("unstorable")
def unstorable(payload, ctx):
    note(ctx)
    if payload["kind"] == "nul_error":
        raise ValueError("NUL\\x00here")
    if payload["kind"] == "nul_result":
        return {"text": "a\\x00b"}
    return {"name": b"caf\\xe9".decode(errors="surrogateescape")}


@task("echo")
async def echo(payload, ctx):
    await anote(ctx)
    return {"echo": payload, "attempt": ctx.attempt, "text": "h\\u00e9"}


@task("refuse")
def refuse(payload, ctx):
    note(ctx)
    raise Fail("card refused")


@task("retry_later")
async def retry_later(payload, ctx):
    await anote(ctx)
    if ctx.attempt < payload.get("succeed_on", 99):
        raise Retry("upstream busy", after=payload["after"])
    return {"attempt": ctx.attempt}


@task("chatty")
async def chatty(payload, ctx):
    for i in range(payload.get("reports", 300)):
        ctx.progress({"i": i})
        await asyncio.sleep(0.005)
    await anote(ctx, "reported")
    await asyncio.sleep(payload.get("linger", 2.5))
    await anote(ctx, "end")
"""


def wait_for(condition: Callable[[], Any], timeout: float, message: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)


class WorkerProcess:
    """A worker (or supervisor) process started by a test, its output going to a log file."""

    def __init__(self, popen: subprocess.Popen, log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.pid} still running after {timeout:g}s; log:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.popen.poll() is None


def query(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement on a short-lived connection of the test and return its rows."""
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    return query(dsn, sql, params)[0][0]


def states(dsn: str) -> dict[str, int]:
    """Job counts by state."""
    return dict(query(dsn, "SELECT state::text, count(*) FROM sched_jobs_all GROUP BY 1"))


def worker_rows(dsn: str) -> int:
    return scalar(dsn, "SELECT count(*) FROM sched_workers")


# --- the health server, for the tests that start workers with --health-port ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return None


def health(port: int) -> tuple[int, dict] | None:
    answer = get(port, "/healthz")
    return (answer[0], json.loads(answer[1])) if answer else None


def sample(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None
