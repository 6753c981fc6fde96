"""Failover: a private primary with a synchronous streaming standby, two worker processes draining jobs through
a multi-host URL with ``target_session_attrs=read-write``; the primary is stopped as in a crash, then the
standby promoted. Every job must end succeeded on the new primary with none left running, the workers must
carry on by themselves, and /healthz must say 503 while no primary is reachable and 200 again after.

Handlers note every run in a table on the shared test server, which the failover does not touch, so the runs
lost with the old primary still count: a job whose claim or outcome the standby never received runs again,
and that is what SCHED_WORKER_COMMIT decides (README, "Deploying"). The figures go to
tests/chaos/results/failover-<commit>.json."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from harness import free_port, health, wait_for
from scenario import enqueue, query, scalar
from support.private_server import PrivateServer, create_database

from pgsched import Client
from pgsched.errors import DatabaseUnavailable

pytestmark = pytest.mark.slow

JOBS = 3000
CONCURRENCY = 10
HANDLER_SECONDS = 0.02

APP_SOURCE = '''
"""Failover handlers: each run is noted, with its attempt and process, in a table off the failing servers."""
import asyncio
import os

import psycopg

from pgsched.worker import task

_conn = None


@task("failover.record")
async def record(payload, ctx):
    global _conn
    await asyncio.sleep(payload.get("seconds", 0))
    # The shared test server may restart under other test runs: reconnect and note the run all the same.
    for _ in range(600):
        try:
            if _conn is None or _conn.closed or _conn.broken:
                _conn = await psycopg.AsyncConnection.connect(os.environ["FAILOVER_RUNS_URL"], autocommit=True)
            await _conn.execute(
                "INSERT INTO failover_runs (job_id, attempt, pid) VALUES (%s, %s, %s)",
                (ctx.job_id, ctx.attempt, os.getpid()),
            )
            return
        except psycopg.OperationalError:
            _conn = None
            await asyncio.sleep(0.1)
    raise RuntimeError("could not note the run")
'''


def status(port: int) -> int | None:
    """The status /healthz answers, or None while nothing answers."""
    answer = health(port)
    return answer[0] if answer else None


def quietly(dsn: str, sql: str, params: object = None) -> list[tuple]:
    """``query``, or nothing while the server does not answer."""
    try:
        return query(dsn, sql, params)
    except psycopg.OperationalError:
        return []


@pytest.fixture
def runs_dsn(dsn: str) -> str:
    """Where handlers note their runs: a database on the shared test server."""
    query(dsn, "CREATE TABLE failover_runs (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL)")
    return dsn


@pytest.fixture
def pair(make_server) -> tuple[PrivateServer, PrivateServer]:
    """A primary whose commits wait for its standby (synchronous replication), and that standby, streaming."""
    primary = make_server(settings={"synchronous_commit": "on", "synchronous_standby_names": "'standby'"}).launch()
    # Once promoted, the standby has no standby of its own to wait for (a failover manager such as Patroni
    # rewrites synchronous_standby_names the same way).
    standby = primary.standby("standby", settings={"synchronous_standby_names": "''"})
    wait_for(
        lambda: query(primary.dsn(), "SELECT sync_state FROM pg_stat_replication") == [("sync",)],
        30,
        "the standby to be synchronous",
    )
    return primary, standby


@pytest.fixture
def start_worker(tmp_path: Path, runs_dsn: str) -> Iterator[Callable[..., subprocess.Popen]]:
    app = tmp_path / "app"
    app.mkdir()
    (app / "failoverapp.py").write_text(APP_SOURCE)
    started: list[subprocess.Popen] = []

    def start(url: str, commit: str, health_port: int) -> subprocess.Popen:
        env = {
            **os.environ,
            "SCHED_DATABASE_URL": url,
            "SCHED_WORKER_COMMIT": commit,
            "FAILOVER_RUNS_URL": runs_dsn,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(app), os.environ.get("PYTHONPATH")])),
        }
        env.pop("SCHED_APP", None)
        args = ["--app", "failoverapp", "--concurrency", str(CONCURRENCY), "--health-port", str(health_port)]
        args += ["--poll-interval", "0.5s", "--stale-after", "15s"]
        with open(tmp_path / f"worker-{len(started)}.log", "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pgsched", "worker", *args],
                cwd=app,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(popen)
        return popen

    yield start
    for i, popen in enumerate(started):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=30)
        # Shown by pytest only when the test failed.
        print(f"--- worker {i} log ---\n" + (tmp_path / f"worker-{i}.log").read_text(errors="replace")[-4000:])


# The levels compared; SCHED_FAILOVER_COMMITS=remote_write,local measures the others.
@pytest.mark.parametrize("commit", os.environ.get("SCHED_FAILOVER_COMMITS", "off,on").split(","))
def test_workers_carry_on_after_a_failover(commit: str, pair, start_worker, runs_dsn: str, sched_at, report) -> None:
    primary, standby = pair
    create_database(primary)
    url = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/sched"
    url += "?target_session_attrs=read-write"
    enqueue(primary.dsn("sched"), "failover.record", JOBS, f'{{"seconds": {HANDLER_SECONDS}}}')
    producer = Client(url)
    producer.enqueue("failover.record", queue="later")
    ports = [free_port(), free_port()]
    workers = [start_worker(url, commit, port) for port in ports]
    wait_for(lambda: all(status(port) == 200 for port in ports), 30, "both workers to be healthy")

    def succeeded(dsn: str) -> int:
        rows = quietly(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state = 'succeeded'")
        return rows[0][0] if rows else 0

    wait_for(lambda: succeeded(primary.dsn("sched")) >= JOBS // 4, 60, "a quarter of the jobs to finish")
    primary.kill()
    killed = time.monotonic()
    # No primary now: the standby refuses read-write sessions, so every worker must turn unhealthy.
    wait_for(lambda: all(status(port) == 503 for port in ports), 30, "/healthz to answer 503 without a primary")
    unhealthy_after = time.monotonic() - killed
    standby.promote()
    promoted_at = datetime.now(UTC)
    promoted = time.monotonic()
    new = standby.dsn("sched")
    first = wait_for(
        lambda: scalar(new, "SELECT min(finished_at) FROM sched_jobs_all WHERE finished_at > %s", (promoted_at,)),
        60,
        "a job to finish on the new primary",
    )
    wait_for(lambda: succeeded(new) == JOBS, 90, "every job to succeed on the new primary", interval=0.2)
    drained = time.monotonic() - promoted
    wait_for(lambda: all(status(port) == 200 for port in ports), 30, "/healthz to answer 200 again")
    assert all(worker.poll() is None for worker in workers), "a worker exited"
    # A producer's own connection died with the old primary: the call that meets the loss says so, the
    # next one goes to the new primary; the commands find it by themselves.
    with contextlib.suppress(DatabaseUnavailable):
        producer.enqueue("failover.record", queue="later")
    producer.enqueue("failover.record", queue="later", key="after-failover")
    producer.close()
    assert sched_at(url, "add", "failover.record", "--queue", "later").returncode == 0
    shown = sched_at(url, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    later = [q for q in json.loads(shown.stdout)["queues"] if q["queue"] == "later"]
    assert later and 3 <= later[0]["queued"] <= 4

    states = dict(query(new, "SELECT state::text, count(*) FROM sched_jobs_all WHERE queue = 'default' GROUP BY 1"))
    assert states == {"succeeded": JOBS}
    runs = dict(query(runs_dsn, "SELECT job_id, count(*) FROM failover_runs GROUP BY job_id"))
    assert len(runs) == JOBS, "a job succeeded that no handler ran"
    reruns = sum(runs.values()) - JOBS
    visible = scalar(new, "SELECT count(*) FROM sched_jobs_all WHERE attempt > 1")
    # At least once, and bounded: a re-run is a job some worker held (claimed, running or with its outcome
    # not yet on the standby) at the crash; two workers hold at most a claim batch and their slots each.
    assert reruns <= 2 * 2 * CONCURRENCY + len(workers) * 500
    figures = {
        "worker_commit": commit,
        "jobs": JOBS,
        "workers": len(workers),
        "concurrency": CONCURRENCY,
        "handler_seconds": HANDLER_SECONDS,
        "reruns": reruns,
        "reruns_with_attempt_above_1": visible,
        "max_runs_of_a_job": max(runs.values()),
        "seconds_until_unhealthy": round(unhealthy_after, 2),
        "seconds_promotion_to_first_finish": round((first - promoted_at).total_seconds(), 3),
        "seconds_promotion_to_drained": round(drained, 2),
    }
    summary = (
        f"SCHED_WORKER_COMMIT={commit}: {reruns} re-run(s) of {JOBS} jobs ({visible} with attempt > 1), first job"
        f" finished {figures['seconds_promotion_to_first_finish']}s after promotion"
    )
    print(summary)
    report(f"failover-{commit}", summary, figures)
