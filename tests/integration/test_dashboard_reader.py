"""The dashboard's reader counts correctly with a few cheap queries, and tolerates an older schema."""

from __future__ import annotations

import io
import uuid

import psycopg
from rich.console import Console

from pgsched import dashboard
from pgsched.db import Connection, connect
from pgsched.errors import DatabaseUnavailable
from pgsched.sqlfiles import query


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
    # One query each for totals, live counts, recent finishes, failures, workers, queue controls and the
    # busiest groups (of the queues with ready or running jobs).
    assert snap.queries == 7
    assert snap.query_ms > 0


def test_totals_are_reread_only_every_few_seconds(dsn: str, conn: Connection) -> None:
    _seed(dsn)
    reader = dashboard.Reader(conn, totals_every_s=3600)
    assert reader.snapshot().queries == 7
    assert reader.snapshot().queries == 6


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


def test_the_busiest_groups_read_the_indexes_whatever_the_number_of_groups(dsn: str, conn: Connection) -> None:
    # 10,000 groups with 3 ready jobs each, 1,500 more in "big", and running jobs in 8 groups.
    conn.run(
        "INSERT INTO sched_jobs (queue, task, group_name) SELECT 'sync', 't', 'tenant:' || (i % 10000) "
        "FROM generate_series(1, 30000) i"
    )
    conn.run("INSERT INTO sched_jobs (queue, task, group_name) SELECT 'sync', 't', 'big' FROM generate_series(1, 1500)")
    conn.run(
        "INSERT INTO sched_jobs (queue, task, group_name, state, attempt, started_at, worker_id) "
        "SELECT 'sync', 't', 'tenant:' || (i % 8), 'running', 1, now(), gen_random_uuid() FROM generate_series(1, 20) i"
    )
    conn.run("INSERT INTO sched_jobs (queue, task) SELECT 'plain', 't' FROM generate_series(1, 100)")
    conn.run("VACUUM ANALYZE sched_jobs")
    snap = dashboard.Reader(conn).snapshot()
    # Most running first (tenant:1 to tenant:4 run 3 each; tenant:0, 5, 6 and 7 run 2), then the groups next in
    # claim order (tenant:5 is among the first 500 ready jobs, tenant:0 is not).
    assert [(g["group_name"], g["running"], g["ready"]) for g in snap.groups] == [
        ("tenant:1", 3, 3),
        ("tenant:2", 3, 3),
        ("tenant:3", 3, 3),
        ("tenant:4", 3, 3),
        ("tenant:5", 2, 3),
    ]
    assert {g["queue"] for g in snap.groups} == {"sync"}
    with psycopg.connect(dsn) as raw:
        plan = "\n".join(
            r[0]
            for r in raw.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query("DashboardBusiestGroups"),
                {"queues": ["sync", "plain"], "limit": 5},
            )
        )
    assert "Seq Scan on sched_jobs" not in plan, plan
    # Per group shown, at most 1,000 entries of the index of grouped ready jobs; 500 of the ready index.
    assert "Index Only Scan using sched_jobs_ready_group on sched_jobs" in plan, plan
    assert "Index Scan using sched_jobs_ready on sched_jobs" in plan, plan
    out = io.StringIO()
    Console(file=out, width=100, height=60).print(
        dashboard.fit(snap, Console(file=io.StringIO(), width=100, height=60), 1.0)
    )
    assert "busiest groups" in out.getvalue() and "tenant:1" in out.getvalue()
