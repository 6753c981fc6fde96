"""Database faults a worker must ride out without crashing, losing outcomes or running jobs twice for nothing:
its outcomes connection killed in the middle of flushes, and statements cancelled by ``statement_timeout`` or
``lock_timeout`` while a lock blocks the jobs table. Once the obstruction goes away, every job finishes."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from scenario import WorkerFleet, enqueue, prepare, query, write_app

pytestmark = pytest.mark.chaos


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[WorkerFleet]:
    prepare(dsn)
    workers = WorkerFleet(dsn, write_app(tmp_path / "app"), tmp_path, ["--poll-interval", "0.5s"])
    yield workers
    workers.close()


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def unfinished(dsn: str) -> int:
    return query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state <> 'succeeded'")[0][0]


def executions_by_job(dsn: str) -> dict[int, int]:
    return dict(query(dsn, "SELECT job_id, count(*) FROM chaos_executions WHERE phase = 'run' GROUP BY job_id"))


def test_outcomes_survive_their_connection_being_killed_mid_flush(dsn: str, server_dsn: str, fleet) -> None:
    # Each outcome statement of the worker lingers a little, so that the terminations land inside flushes.
    query(
        dsn,
        """
        CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') = 'sched-worker-outcomes' THEN
                PERFORM pg_sleep(0.05);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER linger AFTER UPDATE OR DELETE ON sched_jobs FOR EACH STATEMENT EXECUTE FUNCTION linger();
        """,
    )
    ids = enqueue(dsn, "chaos.record", 3000, '{"seconds": 0.01}')
    worker = fleet.start("--concurrency", "20")
    wait_for(lambda: unfinished(dsn) < 2950, 30, "the worker to get going")
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    cut = 0
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        while unfinished(dsn) > 200 and cut < 10 and time.monotonic() < deadline:
            # Only a backend inside a statement or a transaction: each termination interrupts a flush.
            cut += len(
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                    " AND application_name = 'sched-worker-outcomes' AND state <> 'idle'",
                    (name,),
                ).fetchall()
            )
            time.sleep(0.2)
    assert cut >= 5, "too few flushes were interrupted"
    wait_for(lambda: unfinished(dsn) == 0, 60, "every outcome to be written")
    assert worker.alive()
    # At least once, and at most once more: a flush whose commit was cut off from its answer is written again
    # and fenced; it never makes a job run again while its worker lives.
    runs = executions_by_job(dsn)
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    assert query(dsn, "SELECT DISTINCT attempt FROM sched_jobs_all") == [(1,)]
    log = worker.log()
    assert log.count("database connection (outcomes) lost") >= cut // 2, log[-3000:]
    os_kill_and_wait(worker)


def os_kill_and_wait(worker) -> None:
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0, worker.log()[-3000:]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("statement_timeout", "50ms", "canceling statement due to statement timeout"),
        ("lock_timeout", "100ms", "canceling statement due to lock timeout"),
    ],
)
def test_timeouts_while_the_jobs_table_is_locked(dsn: str, fleet, setting: str, value: str, message: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    query(dsn, f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")
    # The worker (the fleet has the fixture's DSN) meets the setting; the test's own reads are not the subject,
    # and on a loaded machine 50 ms is too short for them too.
    dsn = psycopg.conninfo.make_conninfo(dsn, options="-c statement_timeout=0 -c lock_timeout=0")
    (chatty,) = enqueue(dsn, "chaos.progress", 1, '{"seconds": 7}', priority=1)
    ids = enqueue(dsn, "chaos.record", 300, '{"seconds": 0.3}')
    worker = fleet.start("--concurrency", "20")
    wait_for(lambda: len(executions_by_job(dsn)) >= 20 or not worker.alive(), 60, "jobs to run")
    assert worker.alive(), worker.log()[-3000:]
    assert query(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (chatty,)) == [("running",)]
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SET statement_timeout = 0")
        blocker.execute("SET lock_timeout = 0")
        # Claims, outcome flushes and the reaper all need the jobs table; for four seconds none of them gets it.
        blocker.execute("LOCK TABLE sched_jobs IN ACCESS EXCLUSIVE MODE")
        time.sleep(4)
        assert worker.alive()
        blocker.rollback()
    wait_for(lambda: unfinished(dsn) == 0, 60, "every job to finish")
    assert worker.alive()
    # Its progress writes failed too (the chatty job reported all along), yet the supervisor still enforces
    # timeouts afterwards.
    (hung,) = enqueue(dsn, "chaos.hang", 1)
    wait_for(
        lambda: (
            query(dsn, "SELECT state::text, error FROM sched_jobs_all WHERE id = %s", (hung,))
            == [("failed", "timed out after 1s")]
        ),
        20,
        "the hung job to time out",
    )
    log = worker.log()
    assert message in log, log[-3000:]
    assert re.search(r"claim failed: .*" + message, log), log[-3000:]
    assert re.search(r"writing \d+ outcome\(s\) failed: .*" + message + "; will retry", log), log[-3000:]
    # Failures are retried at a measured pace, not in a tight loop.
    assert len(log.splitlines()) < 60, log[-3000:]
    # The worker kept beating through it, so nothing was reaped: every job ran exactly once.
    runs = executions_by_job(dsn)
    assert set(runs) == {*ids, chatty}
    assert set(runs.values()) == {1}
    os_kill_and_wait(worker)


def test_jobs_of_a_claim_whose_follow_up_failed_are_given_back(dsn: str, fleet) -> None:
    # A task that declares its own timeout makes the worker write it onto the jobs right after claiming them.
    # While the obstruction stands, that write outlives statement_timeout: the claim committed, its follow-up
    # did not, and the worker never started the jobs. They must not sit 'running' until the reaper's timeout.
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    query(
        dsn,
        """
        CREATE TABLE obstruct (on_ boolean);
        INSERT INTO obstruct VALUES (true);
        CREATE FUNCTION obstruct_limits() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM obstruct) THEN
                PERFORM pg_sleep(1);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER obstruct_limits BEFORE UPDATE ON sched_jobs FOR EACH ROW
            WHEN (OLD.timeout IS DISTINCT FROM NEW.timeout AND OLD.state = 'running')
            EXECUTE FUNCTION obstruct_limits();
        """,
    )
    query(dsn, f"ALTER DATABASE \"{name}\" SET statement_timeout = '200ms'")
    ids = enqueue(dsn, "chaos.limited", 3)
    worker = fleet.start("--concurrency", "5")
    wait_for(lambda: "claim failed" in worker.log(), 30, "a claim to fail")
    assert query(dsn, "SELECT DISTINCT state::text, attempt FROM sched_jobs_all") == [("running", 1)]
    query(dsn, "DELETE FROM obstruct")
    # Given back without spending an attempt and run at once, long before the 30 s timeout would free them.
    wait_for(lambda: unfinished(dsn) == 0, 15, "the jobs to run")
    assert query(dsn, "SELECT DISTINCT attempt FROM sched_jobs_all") == [(1,)]
    assert set(executions_by_job(dsn)) == set(ids)
    assert "giving back 3 job(s)" in worker.log()
    assert worker.alive()
    os_kill_and_wait(worker)
