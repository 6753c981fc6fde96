"""Everything through PgBouncer in transaction mode (4 server connections, more clients than that): adds from
the CLI and the Client (single and bulk), two draining workers, status, cancel, retry, schedules, reap and
cleanup. Every job runs exactly once (a retried one once more), and no log shows an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
from harness import query

from pgsched.client import Client

pytestmark = pytest.mark.slow


def sched_via(url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCHED_POOL_MODE"}
    done = subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        input=input,
        capture_output=True,
        text=True,
        env={**env, "SCHED_DATABASE_URL": url},
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Error" not in done.stderr, done.stderr
    return done


def test_every_command_and_two_workers_through_pgbouncer(dsn, pooled_dsn, pgbouncer, start_pooled_worker) -> None:
    added: list[int] = []
    added += [int(sched_via(pooled_dsn, "add", "note").stdout) for _ in range(3)]
    lines = "".join(json.dumps({"task": "note", "payload": {"n": n}}) + "\n" for n in range(50))
    added += [int(x) for x in sched_via(pooled_dsn, "add", "--jsonl", "-", input=lines).stdout.split()]
    with Client(pooled_dsn) as client:
        added += [client.enqueue("note", {"n": n}).id for n in range(20)]
        added += [e.id for e in client.enqueue_many([{"task": "note", "payload": {"n": n}} for n in range(300)])]
        failing = [client.enqueue("fail_once").id for _ in range(5)]
        later = client.enqueue("note", delay="1h").id
    sched_via(pooled_dsn, "cancel", str(later))
    sched_via(pooled_dsn, "schedule", "add", "nightly", "note", "--cron", "0 3 * * *")
    assert "nightly" in sched_via(pooled_dsn, "schedule", "list").stdout

    workers = [start_pooled_worker("--burst", "--concurrency", "4", "--poll-interval", "0.2s") for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.log()[-3000:]

    # The failed jobs go back through the pooler and run their second attempt.
    assert query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state = 'failed'") == [(5,)]
    sched_via(pooled_dsn, "retry", "--failed")
    again = start_pooled_worker("--burst", "--concurrency", "4")
    assert again.wait(timeout=60) == 0, again.log()[-3000:]

    states = dict(query(dsn, "SELECT state::text, count(*) FROM sched_jobs_all GROUP BY 1"))
    assert states == {"succeeded": len(added) + len(failing), "cancelled": 1}
    runs = dict(query(dsn, "SELECT job_id, count(*) FROM executions GROUP BY 1"))
    assert runs == {**dict.fromkeys(added, 1), **dict.fromkeys(failing, 2)}
    # Both draining workers took part, and the server saw no more than the pool's connections for them.
    assert len({pid for (pid,) in query(dsn, "SELECT DISTINCT pid FROM executions")}) >= 2

    status = json.loads(sched_via(pooled_dsn, "status", "--json").stdout)
    assert status
    assert "requeued 0" in sched_via(pooled_dsn, "reap").stdout
    sched_via(pooled_dsn, "schedule", "remove", "nightly")
    time.sleep(1.1)
    cleaned = json.loads(sched_via(pooled_dsn, "cleanup", "--older-than", "1s", "--json").stdout)
    assert cleaned["deleted"] == len(added) + len(failing) + 1
    assert query(dsn, "SELECT count(*) FROM sched_jobs_all") == [(0,)]

    for worker in [*workers, again]:
        log = worker.log()
        assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
        assert "transaction pooler" in log  # it said once that it polls instead of listening
        assert log.count("transaction pooler") == 1
    assert " ERROR " not in pgbouncer.log(), pgbouncer.log()[-3000:]
