"""The dashboard's reader counts correctly with a few cheap queries, and tolerates an older schema."""

from __future__ import annotations

import io
import uuid

import psycopg
from rich.console import Console

from pgsched import dashboard
from pgsched.db import Connection, connect
from pgsched.errors import DatabaseUnavailable


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute(
            """
            INSERT INTO sched_jobs (queue, task, state, attempt, run_at, started_at, finished_at, error, worker_id)
            VALUES ('mail', 'send', 'queued', 0, now() - interval '90 seconds', NULL, NULL, NULL, NULL),
                   ('mail', 'send', 'queued', 0, now() + interval '1 hour', NULL, NULL, NULL, NULL),
                   ('mail', 'send', 'running', 1, now(), now(), NULL, NULL, gen_random_uuid()),
                   ('mail', 'send', 'succeeded', 1, now(), now(), now() - interval '10 seconds', NULL, NULL),
                   ('mail', 'send', 'failed', 3, now(), now(), now() - interval '5 minutes', 'SMTP 554: go away',
                    NULL),
                   ('old', 'send', 'succeeded', 1, now(), now(), now() - interval '2 days', NULL, NULL)
            """
        )
        raw.execute(
            "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, running) "
            "VALUES (%s, 'box', 7, '{mail}', '{send}', 4, 1)",
            (uuid.uuid4(),),
        )
        raw.execute("INSERT INTO sched_queues (queue, paused) VALUES ('mail', true), ('idle', true)")


def test_snapshot_counts_states_throughput_failures_workers_and_controls(dsn: str, conn: Connection) -> None:
    _seed(dsn)
    snap = dashboard.Reader(conn).snapshot()
    by_name = {q["queue"]: q for q in snap.queues}
    assert sorted(by_name) == ["idle", "mail", "old"]
    mail = by_name["mail"]
    assert (mail["queued"], mail["scheduled"], mail["running"], mail["succeeded"], mail["failed"]) == (1, 1, 1, 1, 1)
    assert 89 < mail["oldest_ready_age_s"] < 120
    assert mail["finished_last_minute"] == 1 and mail["failed_last_hour"] == 1
    assert by_name["old"]["finished_last_minute"] == 0 and by_name["old"]["succeeded"] == 1
    assert [f["error"] for f in snap.failures] == ["SMTP 554: go away"]
    assert [(w["host"], w["running"], w["concurrency"]) for w in snap.workers] == [("box", 1, 4)]
    assert snap.controls["mail"]["paused"] and snap.controls["idle"]["paused"]
    # One query each for totals, live counts, recent finishes, failures, workers and queue controls.
    assert snap.queries == 6
    assert snap.query_ms > 0


def test_totals_are_reread_only_every_few_seconds(dsn: str, conn: Connection) -> None:
    _seed(dsn)
    reader = dashboard.Reader(conn, totals_every_s=3600)
    assert reader.snapshot().queries == 6
    assert reader.snapshot().queries == 5


def test_queue_filter(dsn: str, conn: Connection) -> None:
    _seed(dsn)
    snap = dashboard.Reader(conn, queue="old").snapshot()
    assert [q["queue"] for q in snap.queues] == ["old"]
    assert snap.workers == [] and snap.failures == []


def test_schema_without_queue_controls_is_tolerated(dsn: str, conn: Connection) -> None:
    _seed(dsn)
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("DROP TABLE sched_queues")
    reader = dashboard.Reader(conn)
    assert reader.has_controls is False
    snap = reader.snapshot()
    assert snap.controls == {} and "mail" in {q["queue"] for q in snap.queues}


def test_watch_draws_and_survives_a_lost_database(dsn: str) -> None:
    _seed(dsn)
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None)
    dashboard.watch(lambda: connect(dsn), 0.1, console=console, refreshes=2)
    assert "mail paused" in out.getvalue()

    def unreachable() -> Connection:
        raise DatabaseUnavailable("cannot reach the database: connection refused")

    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None)
    dashboard.watch(unreachable, 0.1, console=console, refreshes=2)
    assert "! cannot reach the database: connection refused (retrying)" in out.getvalue()


def test_cli_refuses_watch_with_json(sched) -> None:
    result = sched("status", "--watch", "--json")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: --watch")
    result = sched("status", "--watch", "--interval", "0")
    assert result.returncode == 2 and "invalid interval" in result.stderr
