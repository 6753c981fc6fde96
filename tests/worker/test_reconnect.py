"""Lost connections: the worker survives its backends being terminated (or the server restarting), reconnects
with backoff instead of spinning, and writes every outcome it could not write before; outcomes are retried,
never lost, and a replay is fenced (at-least-once)."""

from __future__ import annotations

import re
import signal
import time

import psycopg
import pytest
from harness import query, wait_for
from support.private_server import PrivateServer


def terminate(server_dsn: str, dsn: str, application_name: str) -> int:
    """Terminate this test database's backends whose application_name matches (LIKE); returns how many."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
            (name, application_name),
        ).fetchall()
    return len(rows)


def unfinished(dsn: str) -> int:
    return query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state <> 'succeeded'")[0][0]


def assert_at_least_once(dsn: str, ids: list[int]) -> None:
    """Every job succeeded; each ran once, or twice on two distinct attempts when a replay was fenced."""
    assert query(dsn, "SELECT DISTINCT state::text FROM sched_jobs_all") == [("succeeded",)]
    runs = dict(query(dsn, "SELECT job_id, count(*) FROM executions GROUP BY job_id"))
    assert set(runs) == set(ids)
    assert max(runs.values()) <= 2
    assert query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE attempt > 2") == [(0,)]


def reconnect_attempts(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"restored after (\d+) attempt", log)]


def worker_backends(dsn: str) -> dict[str, int]:
    """The worker's connections to this database: application_name to backend pid."""
    return dict(
        query(
            dsn,
            "SELECT application_name, pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'sched-worker-%'",
        )
    )


def test_terminated_connections_are_reopened_and_every_job_finishes(dsn, server_dsn, start_worker, add_jobs) -> None:
    ids = add_jobs("sleepy", 1000, '{"seconds": 0.02}')
    worker = start_worker("--concurrency", "10", "--poll-interval", "0.5s")
    wait_for(lambda: unfinished(dsn) < 980, 20, "the worker to get going")
    before = worker_backends(dsn)
    assert set(before) == {f"sched-worker-{role}" for role in ("claim", "outcomes", "control", "listen")}
    rounds = 0
    while unfinished(dsn) and rounds < 6:
        rounds += terminate(server_dsn, dsn, "sched-worker-%") > 0
        time.sleep(0.3)
    assert rounds >= 3, "the jobs finished before the connections could be cut"
    wait_for(lambda: unfinished(dsn) == 0, 30, "every job to succeed")
    assert worker.alive()
    assert_at_least_once(dsn, ids)
    # Every connection was opened again (new backends), and the worker did not fill its log retrying. A link is
    # reopened when next used, and the last cut may land after the last outcome was written: one more job makes
    # the worker claim and write again.
    add_jobs("sleepy", 1, '{"seconds": 0}')
    wait_for(lambda: unfinished(dsn) == 0, 30, "the extra job to succeed")
    after = wait_for(lambda: len(b := worker_backends(dsn)) == 4 and b, 10, "all four connections to be back")
    assert not set(after.values()) & set(before.values())
    assert len(worker.log().splitlines()) <= 1 + rounds * 8, worker.log()[-3000:]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_a_dropped_outcomes_connection_loses_no_outcome(dsn, server_dsn, start_worker, add_jobs) -> None:
    # Make each outcome statement of the worker take a while, so that a cut lands in the middle of a flush; the
    # worker retries an interrupted batch at once, so every retry is another flush to cut.
    query(
        dsn,
        """
        CREATE FUNCTION slow_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') = 'sched-worker-outcomes' THEN
                PERFORM pg_sleep(0.3);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER slow_outcomes AFTER UPDATE OR DELETE ON sched_jobs FOR EACH STATEMENT
            EXECUTE FUNCTION slow_outcomes();
        """,
    )
    ids = add_jobs("count", 1500)
    worker = start_worker("--concurrency", "20", "--poll-interval", "0.5s")
    wait_for(lambda: unfinished(dsn) < 1500, 20, "the worker to get going")
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    killed: list[int] = []
    deadline = time.monotonic() + 20
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        while unfinished(dsn) and len(killed) < 5 and time.monotonic() < deadline:
            # Only backends in the middle of writing successes (and each backend once: a terminated one may
            # linger in pg_stat_activity for a moment): each cut interrupts a flush.
            flushing = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                " AND application_name = 'sched-worker-outcomes' AND state = 'active'"
                " AND query LIKE %s AND pid <> ALL(%s)",
                (name, "%sched_finish_succeeded%", killed),
            ).fetchall()
            killed += [
                pid for (pid,) in flushing if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            ]
            time.sleep(0.01)
    assert len(killed) >= 3, f"only {len(killed)} flush(es) were interrupted"
    wait_for(lambda: unfinished(dsn) == 0, 45, "every outcome to be written")
    assert_at_least_once(dsn, ids)
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def quietly(dsn: str, sql: str) -> list[tuple] | None:
    """The rows, or None while the server is down."""
    try:
        return query(dsn, sql)
    except psycopg.OperationalError:
        return None


@pytest.mark.slow
@pytest.mark.private_server
def test_the_worker_rides_out_a_server_restart(server: PrivateServer, dsn, start_worker, add_jobs) -> None:
    # The test's database, and so its worker, are on a private server: restarting it touches no other test run.
    assert psycopg.conninfo.conninfo_to_dict(dsn)["port"] == str(server.port)
    ids = add_jobs("sleepy", 300, '{"seconds": 0.05}')
    worker = start_worker("--concurrency", "10", "--poll-interval", "0.5s")
    wait_for(lambda: unfinished(dsn) < 290, 20, "the worker to get going")
    server.restart()
    wait_for(
        lambda: quietly(dsn, "SELECT count(*) FROM sched_jobs_all WHERE state <> 'succeeded'") == [(0,)], 45, "all"
    )
    assert worker.alive()
    assert_at_least_once(dsn, ids)
    log = wait_for(lambda: "restored after" in (text := worker.log()) and text, 10, "the reconnection to be logged")
    # Backoff (0.1 s doubling to 5 s) keeps the retries of a restart to a handful per connection.
    assert max(reconnect_attempts(log)) <= 15, log[-3000:]
    assert len(log.splitlines()) < 200, log[-3000:]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
