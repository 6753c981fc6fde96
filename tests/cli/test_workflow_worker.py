"""The workflow features end to end with real ``sched worker`` processes: cancelling a running job, schedules
ticked by several workers (and declared in code), a rate limit shared by two workers, a paused queue, and a
handler's result and progress in ``sched status``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.slow

APP = """
import time
from pgsched.worker import task


@task("report")
def report(payload, ctx):
    ctx.progress({"done": 3, "total": 3})
    time.sleep(1.2)  # outlive the progress flush interval, so the last report is written
    return {"rows": 42}


@task("spin")
def spin(payload, ctx):
    while not ctx.cancelled:
        time.sleep(0.01)
"""

# A schedule declared in code lands on its worker's first queue each minute: only the test of that feature
# runs this app, so that no other test finds a job it did not add.
CRON_APP = """
from pgsched.worker import task


@task("report", cron="* * * * *")
def report(payload, ctx):
    return {"rows": 42}


@task("digest", cron="0 3 * * *", cron_queue="digests")
def digest(payload, ctx):
    return None
"""


@pytest.fixture
def worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real ``sched worker`` processes on the test's database, with the test app importable."""
    (tmp_path / "workflow_app.py").write_text(APP)
    (tmp_path / "workflow_cron_app.py").write_text(CRON_APP)
    started: list[subprocess.Popen] = []

    def start(*args: str, app: str = "workflow_app") -> subprocess.Popen:
        # The test app's folder first; a PYTHONPATH already set (a source checkout under test) stays after it.
        path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "SCHED_DATABASE_URL": dsn, "PYTHONPATH": path}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgsched", "worker", "--app", app, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def sql(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(statement, params)
        return cur.fetchall() if cur.description else []


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def state(dsn: str, job_id: int) -> str:
    return sql(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,))[0][0]


def test_cancelling_a_running_job_stops_it_within_a_second(sched, worker, dsn: str) -> None:
    job_id = int(sched("add", "spin").stdout)
    proc = worker("--burst")
    wait_for(lambda: state(dsn, job_id) == "running")
    asked = time.monotonic()
    assert sched("cancel", str(job_id)).stdout.strip() == f"{job_id}: cancellation requested; its worker will stop it"
    wait_for(lambda: state(dsn, job_id) == "cancelled", timeout=10)
    assert time.monotonic() - asked < 1.0 + 1.0  # the CLI's own start-up is part of the measured time
    assert proc.wait(timeout=30) == 0
    assert json.loads(sched("status", str(job_id), "--json").stdout)["finished_at"] is not None


def test_several_workers_tick_a_schedule_once_per_tick(sched, worker, dsn: str) -> None:
    sched("schedule", "add", "often", "--cron", "* * * * *", "spin", "--catch-up", "all", "--queue", "ticks")
    sql(dsn, "UPDATE sched_schedules SET next_run_at = date_trunc('minute', now()) - interval '10 minutes'")
    for _ in range(3):
        worker("-Q", "elsewhere")  # serves no schedule's queue: only ticks
    wait_for(lambda: sql(dsn, "SELECT next_run_at > now() FROM sched_schedules WHERE name = 'often'")[0][0])
    time.sleep(1.5)  # every worker has ticked again by now
    keys = [r[0] for r in sql(dsn, "SELECT dedupe_key FROM sched_jobs_all WHERE queue = 'ticks'")]
    assert len(keys) == len(set(keys)) and len(keys) in (11, 12)


def test_a_cron_declared_in_code_becomes_a_schedule(worker, dsn: str) -> None:
    worker("-Q", "reports", app="workflow_cron_app")
    wait_for(lambda: bool(sql(dsn, "SELECT 1 FROM sched_schedules WHERE name = 'report'")))
    # Without cron_queue a schedule takes the worker's first queue; with it, the queue it names, whatever the
    # queues of the worker that records it.
    assert sql(dsn, "SELECT cron, task, queue, source FROM sched_schedules ORDER BY name") == [
        ("0 3 * * *", "digest", "digests", "code"),
        ("* * * * *", "report", "reports", "code"),
    ]


def test_two_burst_workers_share_one_rate_limit(sched, worker, dsn: str) -> None:
    lines = "".join('{"task": "sched.noop"}\n' for _ in range(40))
    assert sched("add", "--jsonl", "-", "-Q", "limited", input=lines).returncode == 0
    assert sched("queue", "limit", "limited", "--rate", "10/s", "--burst", "10").returncode == 0
    procs = [worker("--burst", "-Q", "limited") for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    rows = sql(dsn, "SELECT started_at FROM sched_jobs_all WHERE queue = 'limited' ORDER BY started_at")
    assert len(rows) == 40 and state(dsn, 1) == "succeeded"
    starts = [r[0] for r in rows]
    assert starts[-1] - starts[0] >= timedelta(seconds=2.5)
    for n, started in enumerate(starts, start=1):
        # The bucket: at most burst + rate * elapsed jobs may have started by any moment.
        assert n <= 10 + 10 * (started - starts[0]).total_seconds() + 1


def test_a_paused_queue_runs_nothing_until_resumed(sched, worker, dsn: str) -> None:
    sched("queue", "pause", "held")
    for _ in range(3):
        sched("add", "sched.noop", "-Q", "held")
    assert worker("--burst", "-Q", "held").wait(timeout=60) == 0
    assert sql(dsn, "SELECT state::text, count(*) FROM sched_jobs_all GROUP BY 1") == [("queued", 3)]
    why = json.loads(sched("status", "1", "--json").stdout)["why"]
    assert why == "queue held is paused (sched queue resume held)"
    sched("queue", "resume", "held")
    assert worker("--burst", "-Q", "held").wait(timeout=60) == 0
    assert sql(dsn, "SELECT state::text, count(*) FROM sched_jobs_all GROUP BY 1") == [("succeeded", 3)]


def test_status_shows_a_handlers_result_and_progress(sched, worker, dsn: str) -> None:
    job_id = int(sched("add", "report", "-Q", "reports").stdout)
    assert worker("--burst", "-Q", "reports").wait(timeout=60) == 0
    shown = json.loads(sched("status", str(job_id), "--json").stdout)
    assert (shown["state"], shown["result"], shown["progress"]) == ("succeeded", {"rows": 42}, {"done": 3, "total": 3})
    table = sched("status", str(job_id)).stdout
    assert '{"rows": 42}' in table and '{"done": 3, "total": 3}' in table
