"""The worker's health server: /healthz is 200 with JSON while healthy and 503 with a reason when the database
is unreachable or the worker is shutting down; /metrics exposes sched_ samples by queue and task; it listens
on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import psycopg
from harness import free_port, get, health, query, sample, scalar, states, wait_for
from psycopg.conninfo import conninfo_to_dict


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_healthz_and_metrics_while_healthy(dsn, start_worker, add_jobs) -> None:
    port = free_port()
    worker = start_worker("--concurrency", "4", "--health-port", str(port))
    status, body = wait_for(lambda: health(port), 20, "the health server")
    assert status == 200, body
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["queues"] == ["default"] and body["concurrency"] == 4
    assert body["worker_id"] == str(scalar(dsn, "SELECT id FROM sched_workers"))
    # Loopback only by default: nothing listens on the wildcard or an outside address.
    assert listening_addresses(port) == {"0100007F"}

    add_jobs("count", 20)
    add_jobs("echo", 5)
    wait_for(lambda: states(dsn) == {"succeeded": 25}, 20, "the jobs to finish")
    wait_for(
        lambda: sample(get(port, "/metrics")[1], "sched_jobs_succeeded_total", task="count") == 20,
        5,
        "the flush to be counted",
    )
    metrics = get(port, "/metrics")[1]
    assert sample(metrics, "sched_jobs_claimed_total", queue="default", task="count") == 20
    assert sample(metrics, "sched_jobs_claimed_total", queue="default", task="echo") == 5
    assert sample(metrics, "sched_jobs_succeeded_total", queue="default", task="echo") == 5
    assert sample(metrics, "sched_job_duration_seconds_count", queue="default", task="count") == 20
    assert sample(metrics, "sched_job_duration_seconds_bucket", queue="default", task="count", le="+Inf") == 20
    assert sample(metrics, "sched_queue_ready_jobs", queue="default") is not None
    assert sample(metrics, "sched_outcome_flush_seconds_count") >= 1
    assert sample(metrics, "sched_worker_running_jobs") == 0
    assert get(port, "/nope")[0] == 404
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_healthz_is_503_while_the_database_is_unreachable(dsn, server_dsn, start_worker, add_jobs) -> None:
    port = free_port()
    name = conninfo_to_dict(dsn)["dbname"]
    worker = start_worker("--concurrency", "2", "--health-port", str(port), "--poll-interval", "0.5s")
    wait_for(lambda: (health(port) or (0,))[0] == 200, 20, "a healthy worker")
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        try:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name LIKE 'sched-worker-%%'",
                (name,),
            )
            _status, body = wait_for(
                lambda: (h := health(port)) and h[0] == 503 and h, 10, "/healthz to report the outage"
            )
            assert body["status"] == "unhealthy"
            assert "the database is unreachable" in body["reasons"]
            assert worker.alive()
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    wait_for(lambda: health(port)[0] == 200, 15, "the worker to reconnect")
    [job_id] = add_jobs("count")
    wait_for(lambda: states(dsn) == {"succeeded": 1}, 15, "a job after the outage")
    assert query(dsn, "SELECT job_id FROM executions") == [(job_id,)]
    # Reconnecting backs off: one line when a connection is lost, one when it is back, and a few attempts.
    log = worker.log()
    attempts = [int(n) for n in re.findall(r"restored after (\d+) attempt", log)]
    assert attempts and max(attempts) <= 20, log[-3000:]
    assert log.count("lost: ") <= 8, log[-3000:]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_healthz_is_503_while_shutting_down(dsn, start_worker, add_jobs) -> None:
    port = free_port()
    add_jobs("sleepy", 1, '{"seconds": 4}')
    worker = start_worker("--concurrency", "1", "--health-port", str(port))
    wait_for(lambda: query(dsn, "SELECT 1 FROM executions WHERE phase = 'start'"), 20, "the job to start")
    assert health(port)[0] == 200
    worker.send(signal.SIGTERM)
    _status, body = wait_for(lambda: (h := health(port)) and h[0] == 503 and h, 5, "/healthz to say it is stopping")
    assert body["reasons"] == ["shutting down"]
    assert worker.wait(timeout=15) == 0
    assert states(dsn) == {"succeeded": 1}
