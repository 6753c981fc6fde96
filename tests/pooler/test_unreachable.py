"""A worker whose database goes out of reach stops on the first SIGTERM within its shutdown timeout, and its
reconnects back off and are logged once per change of state, never per try. The database goes away by the
PgBouncer in front of it being killed (connections reset, then nothing listens on its port), or was never there
(a port where nothing listens)."""

from __future__ import annotations

import signal
import time

import pytest
from harness import query, wait_for
from pgbouncer import free_port

from pgsched.client import Client

pytestmark = pytest.mark.slow


def reconnect_lines(log: str) -> int:
    return sum("reconnecting (" in line or ") lost" in line for line in log.splitlines())


def test_a_worker_whose_database_went_away_stops_on_the_first_sigterm(
    dsn, pooled_dsn, pgbouncer, start_pooled_worker
) -> None:
    worker = start_pooled_worker("--concurrency", "2", "--poll-interval", "0.2s", "--shutdown-timeout", "3s")
    wait_for(lambda: query(dsn, "SELECT count(*) FROM sched_workers") == [(1,)], 20, "the worker to register")
    pgbouncer.process.kill()
    pgbouncer.process.wait(timeout=10)
    time.sleep(3)  # long enough for several tries of every connection
    assert worker.alive()
    quiet_log = worker.log()
    worker.send(signal.SIGTERM)
    sent = time.monotonic()
    code = worker.wait(timeout=10)
    took = time.monotonic() - sent
    log = worker.log()
    assert took <= 3.0 + 1.5, f"took {took:.1f}s to stop\n{log[-3000:]}"
    # It could not deregister, and says so: the exit code tells an orchestrator that something was left.
    assert code == 1 and "could not deregister" in log, log[-3000:]
    # One line per connection when the outage began (a few connections), none per try; the stop adds none.
    assert reconnect_lines(quiet_log) <= 4, quiet_log
    assert reconnect_lines(log) == reconnect_lines(quiet_log), log
    assert len(log.splitlines()) <= 15, log


def test_a_worker_that_never_reached_its_database_stops_at_once(dsn, start_pooled_worker) -> None:
    nowhere = f"postgresql://root@127.0.0.1:{free_port()}/postgres"
    worker = start_pooled_worker("--shutdown-timeout", "30s", url=nowhere)
    wait_for(lambda: "reconnecting (control) failed" in worker.log(), 20, "the first failed try")
    time.sleep(2)
    worker.send(signal.SIGTERM)
    sent = time.monotonic()
    assert worker.wait(timeout=10) == 0, worker.log()
    assert time.monotonic() - sent < 2.0
    log = worker.log()
    assert reconnect_lines(log) == 1, log
    assert "stopped before it could reach the database" in log


def test_a_worker_with_running_jobs_stops_within_its_shutdown_timeout_when_the_database_is_gone(
    dsn, pooled_dsn, pgbouncer, start_pooled_worker
) -> None:
    """Its jobs have the whole shutdown timeout to finish; then, with nothing to write their outcomes to, it
    leaves them to the reaper instead of waiting longer for the database."""
    with Client(pooled_dsn) as client:
        for _ in range(2):
            client.enqueue("hold", {"seconds": 30})
    worker = start_pooled_worker("--concurrency", "2", "--shutdown-timeout", "2s")
    wait_for(lambda: query(dsn, "SELECT count(*) FROM executions") == [(2,)], 20, "both jobs to start")
    pgbouncer.process.kill()
    pgbouncer.process.wait(timeout=10)
    worker.send(signal.SIGTERM)
    sent = time.monotonic()
    assert worker.wait(timeout=20) == 1, worker.log()[-3000:]
    took = time.monotonic() - sent
    log = worker.log()
    assert took <= 2.0 + 2.5, f"took {took:.1f}s to stop\n{log[-3000:]}"
    assert "outcomes left unwritten" in log and "could not deregister" in log, log[-3000:]
    assert reconnect_lines(log) <= 4, log
