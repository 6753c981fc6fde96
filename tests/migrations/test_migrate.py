"""Migrations: up from an empty database, idempotent, ordered, safe to run concurrently, and checkable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from support.cli import run_sched

from pgsched import db, migrate
from pgsched.errors import DatabaseError, InvalidInput, SchedError

SNAPSHOT_QUERIES = {
    "tables": """
        SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, is_nullable, coalesce(column_default, '')
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, e.enumlabel FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        ORDER BY 1, e.enumsortorder""",
    "migrations": "SELECT version, name, checksum FROM sched_migrations ORDER BY 1",
}


def snapshot(conn: db.Connection) -> dict[str, list[tuple]]:
    """The parts of the catalog a migration can change."""
    return {name: conn.rows(sql) for name, sql in SNAPSHOT_QUERIES.items()}


def test_migrates_an_empty_database(empty_dsn: str) -> None:
    with db.connect(empty_dsn) as conn:
        assert [m.version for m in migrate.pending(conn)] == [m.version for m in migrate.available()]
        done = migrate.apply(conn)
        assert [m.version for m in done] == [m.version for m in migrate.available()]
        assert migrate.pending(conn) == []
        tables = {name for name, kind in conn.rows(SNAPSHOT_QUERIES["tables"]) if kind == "r"}
        assert {"sched_jobs", "sched_job_deps", "sched_workers", "sched_migrations"} <= tables
        indexes = {row[1] for row in conn.rows(SNAPSHOT_QUERIES["indexes"])}
        assert {
            "sched_jobs_ready",
            "sched_jobs_live_dedupe_key",
            "sched_jobs_finished",
            "sched_jobs_running",
        } <= indexes
        applied = migrate.applied(conn)
        assert applied == {m.version: m.checksum for m in migrate.available()}


def test_running_again_changes_nothing(empty_dsn: str) -> None:
    with db.connect(empty_dsn) as conn:
        migrate.apply(conn)
        before = snapshot(conn)
        assert migrate.apply(conn) == []
        after = snapshot(conn)
    assert before["columns"] and before["indexes"] and before["constraints"]
    assert after == before


def test_migrated_schema_matches_a_fresh_template(empty_dsn: str, conn: db.Connection) -> None:
    # The per-test databases are copies of the session template; both must match a from-zero migrate.
    with db.connect(empty_dsn) as fresh:
        migrate.apply(fresh)
        expected = snapshot(fresh)
    assert snapshot(conn) == expected


def _write(folder: Path, name: str, sql: str) -> None:
    (folder / name).write_text(sql)


def _fake_migrations(folder: Path) -> None:
    # Written in the reverse of version order, with names sorting the other way, and with files to ignore.
    _write(folder, "0010_alpha.sql", "INSERT INTO fake_log (step) VALUES ('0010');")
    _write(folder, "0003_beta.sql", "INSERT INTO fake_log (step) VALUES ('0003'); ALTER TABLE fake_log ADD c3 int;")
    _write(folder, "0002_zeta.sql", "INSERT INTO fake_log (step) VALUES ('0002');")
    _write(
        folder,
        "0001_base.sql",
        """CREATE TABLE fake_log (n serial PRIMARY KEY, step text NOT NULL);
           CREATE TABLE sched_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                                          applied_at timestamptz NOT NULL DEFAULT now());
           INSERT INTO fake_log (step) VALUES ('0001');""",
    )
    _write(folder, "queries.sql", "-- name: Nope\nSELECT 1/0;")
    _write(folder, "12_short.sql", "SELECT 1/0;")
    _write(folder, "0004_notes.txt", "SELECT 1/0;")


def test_applies_files_in_version_order(empty_dsn: str, tmp_path: Path) -> None:
    _fake_migrations(tmp_path)
    with db.connect(empty_dsn) as conn:
        done = migrate.apply(conn, tmp_path)
        assert [(m.version, m.name) for m in done] == [(1, "base"), (2, "zeta"), (3, "beta"), (10, "alpha")]
        assert conn.rows("SELECT step FROM fake_log ORDER BY n") == [("0001",), ("0002",), ("0003",), ("0010",)]
        assert [v for v, *_ in conn.rows("SELECT version FROM sched_migrations ORDER BY applied_at, version")] == [
            1,
            2,
            3,
            10,
        ]
        # A new file with a lower number than the newest applied one is still applied, and only it.
        _write(tmp_path, "0005_late.sql", "INSERT INTO fake_log (step) VALUES ('0005');")
        assert [m.version for m in migrate.pending(conn, tmp_path)] == [5]
        assert [m.version for m in migrate.apply(conn, tmp_path)] == [5]
        assert conn.rows("SELECT step FROM fake_log ORDER BY n")[-1] == ("0005",)
        assert migrate.apply(conn, tmp_path) == []


def test_a_failing_migration_is_rolled_back_alone(empty_dsn: str, tmp_path: Path) -> None:
    _fake_migrations(tmp_path)
    _write(
        tmp_path,
        "0003_beta.sql",
        "INSERT INTO fake_log (step) VALUES ('0003'); DO $$ BEGIN RAISE EXCEPTION 'broken migration'; END $$;",
    )
    with db.connect(empty_dsn) as conn:
        with pytest.raises(DatabaseError, match="broken migration"):
            migrate.apply(conn, tmp_path)
        assert conn.rows("SELECT step FROM fake_log ORDER BY n") == [("0001",), ("0002",)]
        assert sorted(migrate.applied(conn)) == [1, 2]
        # The lock was released: another session can migrate at once.
        with db.connect(empty_dsn) as other:
            assert other.row("SELECT pg_try_advisory_lock(hashtext('sched_migrate'))") == (True,)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql", "SELECT 1;")
    _write(tmp_path, "0001_b.sql", "SELECT 1;")
    with pytest.raises(DatabaseError, match="two migration files share a version number"):
        migrate.available(tmp_path)


def test_concurrent_migrates_apply_each_migration_once(empty_dsn: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            with db.connect(empty_dsn) as conn:
                barrier.wait(timeout=30)
                results.append([m.version for m in migrate.apply(conn)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    everything = [m.version for m in migrate.available()]
    # Exactly one of them applied everything; the others found nothing left to do.
    assert sorted(results) == [[], [], everything]
    with db.connect(empty_dsn) as conn:
        assert [row[0] for row in conn.rows("SELECT version FROM sched_migrations ORDER BY 1")] == everything


def test_concurrent_migrate_processes(empty_dsn: str) -> None:
    env = {"SCHED_DATABASE_URL": empty_dsn, "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgsched", "migrate", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    applied = sorted(len(json.loads(out)["applied"]) for out, _ in outputs)
    assert applied == [0, len(migrate.available())]
    with db.connect(empty_dsn) as conn:
        assert (
            conn.row("SELECT count(*), count(DISTINCT version) FROM sched_migrations")
            == (len(migrate.available()),) * 2
        )


def test_check_reports_pending_and_changes_nothing(empty_dsn: str, sched) -> None:
    env = {"SCHED_DATABASE_URL": empty_dsn}
    with db.connect(empty_dsn) as conn:
        before = conn.rows(SNAPSHOT_QUERIES["tables"])
        checked = sched("migrate", "--check", env=env)
        assert checked.returncode == 1
        assert checked.stdout.splitlines() == [f"{m.version:04d}_{m.name}" for m in migrate.available()]
        n = len(migrate.available())
        assert checked.stderr.splitlines() == [f"Error: {n} migration(s) pending; run `sched migrate`"]
        assert conn.rows(SNAPSHOT_QUERIES["tables"]) == before == []

        as_json = sched("migrate", "--check", "--json", env=env)
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout) == {"pending": [f"{m.version:04d}_{m.name}" for m in migrate.available()]}

        applied = sched("migrate", env=env)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.splitlines() == [f"{m.version:04d}_{m.name}" for m in migrate.available()]
        after = snapshot(conn)

        current = sched("migrate", "--check", env=env)
        assert (current.returncode, current.stdout, current.stderr) == (0, "", "schema is current\n")
        again = sched("migrate", env=env)
        assert (again.returncode, again.stdout, again.stderr) == (0, "", "schema is current\n")
        assert snapshot(conn) == after


@pytest.mark.parametrize(
    ("queue", "task", "accepted"),
    [
        ("default", "sched.noop", True),
        ("mail-eu:2", "reports.send_v2", True),
        ("q" * 64, "t" * 128, True),
        ("", "sched.noop", False),
        ("q" * 65, "sched.noop", False),
        ("default", "t" * 129, False),
        ("has space", "sched.noop", False),
        ("default", "tab\there", False),
        ("default", "line\nbreak", False),
        ("caf\u00e9", "sched.noop", False),
        ("default", "semi;colon", False),
        ("default", "-", True),
    ],
)
def test_the_table_itself_refuses_bad_names(conn: db.Connection, queue: str, task: str, accepted: bool) -> None:
    # A raw INSERT, past every check in Python: the rules hold for writers other than sched too.
    insert = "INSERT INTO sched_jobs (queue, task) VALUES (%s, %s)"
    if accepted:
        conn.run(insert, (queue, task))
        return
    with pytest.raises(InvalidInput, match=r"sched_(queue|task)_name"):
        conn.run(insert, (queue, task))


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("payload", "[1]", "sched_payload_object"),
        ("priority", "1001", "sched_priority_range"),
        ("attempt", "-1", "sched_count_not_negative"),
        ("pending_deps", "-1", "sched_count_not_negative"),
        ("max_attempts", "0", "sched_max_attempts_range"),
        ("timeout", "8 days", "sched_timeout_range"),
        ("timeout", "0 seconds", "sched_timeout_range"),
        ("dedupe_key", "", "sched_dedupe_key_length"),
    ],
)
def test_the_table_itself_refuses_out_of_range_values(conn: db.Connection, column: str, value: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        conn.run(f"INSERT INTO sched_jobs (task, {column}) VALUES ('t', %s)", (value,))
    conn.run("INSERT INTO sched_jobs (task) VALUES ('t')")
    with pytest.raises(InvalidInput, match=rule):
        conn.run(f"UPDATE sched_jobs SET {column} = %s", (value,))


def _migrate_up_to(conn: db.Connection, version: int, folder: Path) -> None:
    """Apply sched's own migrations up to ``version`` only, as an older release would have."""
    folder.mkdir()
    for migration in migrate.available():
        if migration.version <= version:
            _write(folder, f"{migration.version:04d}_{migration.name}.sql", migration.sql)
    migrate.apply(conn, folder)


def test_later_migrations_keep_a_populated_table_in_place(empty_dsn: str, tmp_path: Path) -> None:
    # A database at 0002 with jobs in it takes the later migrations without rewriting the table (the columns
    # change to domains of the same representation; only the indexes keyed on queue are rebuilt; the lease
    # column is added without a default).
    files = """
        SELECT c.relname, c.relfilenode FROM pg_class c
        WHERE c.oid = 'sched_jobs'::regclass
           OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'sched_jobs'::regclass)
        ORDER BY 1"""
    with db.connect(empty_dsn) as conn:
        _migrate_up_to(conn, 2, tmp_path / "sql")
        conn.run("INSERT INTO sched_jobs (queue, task) SELECT 'q' || i, 'task.' || i FROM generate_series(1, 100) i")
        before = conn.rows(files)
        assert [m.version for m in migrate.apply(conn)] == [m.version for m in migrate.available()][2:]
        after = conn.rows(files)
        kept = {"sched_jobs", "sched_jobs_pkey", "sched_jobs_finished", "sched_jobs_running"}
        assert [row for row in after if row[0] in kept] == [row for row in before if row[0] in kept]
        assert conn.row("SELECT count(*) FROM sched_jobs_all")[0] == 100
        table_checks = conn.rows(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'sched_jobs'::regclass AND contype = 'c' ORDER BY 1"
        )
        assert table_checks == [
            ("sched_jobs_running_has_worker",),
            ("sched_jobs_terminal_finished",),
            ("sched_jobs_waiting_has_deps",),
        ]


def test_a_row_breaking_a_rule_stops_the_domain_migration(empty_dsn: str, tmp_path: Path) -> None:
    # A row written past the old checks (they are dropped here by hand) makes 0004 fail and leaves it unapplied.
    with db.connect(empty_dsn) as conn:
        _migrate_up_to(conn, 3, tmp_path / "sql")
        conn.run("ALTER TABLE sched_jobs DROP CONSTRAINT sched_jobs_priority_range")
        conn.run("INSERT INTO sched_jobs (task, priority) VALUES ('t', 5000)")
        conn.run(
            "ALTER TABLE sched_jobs ADD CONSTRAINT sched_jobs_priority_range"
            " CHECK (priority BETWEEN -1000 AND 1000) NOT VALID"
        )
        with pytest.raises(SchedError, match=r"priority.*violate the new constraint"):
            migrate.apply(conn)
        assert sorted(migrate.applied(conn)) == [1, 2, 3]


def test_the_lease_migration_gives_running_jobs_distinct_leases_and_workers_a_contract(
    empty_dsn: str, tmp_path: Path
) -> None:
    # Jobs running under workers of the older version at migration time get a lease each (so a reaper or cancel
    # of the new version can address them); other jobs get none; registered workers take the default contract.
    with db.connect(empty_dsn) as conn:
        _migrate_up_to(conn, 4, tmp_path / "sql")
        conn.run(
            "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency)"
            " VALUES ('00000000-0000-0000-0000-000000000001', 'h', 1, '{default}', '{t}', 4)"
        )
        conn.run(
            "INSERT INTO sched_jobs (task, state, attempt, worker_id, started_at)"
            " SELECT 't', 'running', 1, '00000000-0000-0000-0000-000000000001', now() FROM generate_series(1, 3)"
        )
        conn.run("INSERT INTO sched_jobs (task) SELECT 't' FROM generate_series(1, 2)")
        assert [m.version for m in migrate.apply(conn)] == [m.version for m in migrate.available()][4:]
        leases = conn.rows("SELECT state::text, lease FROM sched_jobs_all ORDER BY id")
        running = [lease for state, lease in leases if state == "running"]
        assert len(running) == 3 and None not in running and len(set(running)) == 3
        assert [lease for state, lease in leases if state != "running"] == [None, None]
        contract = conn.row(
            "SELECT extract(epoch FROM stale_after), extract(epoch FROM timeout_grace) FROM sched_workers"
        )
        assert tuple(float(v) for v in contract) == (30.0, 10.0)


def test_a_worker_refuses_a_database_without_its_releases_migrations(empty_dsn: str, tmp_path: Path) -> None:
    # Its claims call functions the last migration creates: on the older database every claim would fail.
    latest = migrate.available()[-1].version
    with db.connect(empty_dsn) as conn:
        _migrate_up_to(conn, latest - 1, tmp_path / "older")
    (tmp_path / "noop_app.py").write_text(
        "from pgsched.worker import task\n\n\n@task('t')\ndef t(payload, ctx):\n    pass\n"
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    refused = run_sched(empty_dsn, "worker", "--app", "noop_app", "--burst", env=env, timeout=60)
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert message.endswith(
        f"this database's sched tables are at migration {latest - 1:04d} and this release needs {latest:04d}:"
        " run `sched migrate` before starting its workers"
    ), refused.stderr[-2000:]
    with db.connect(empty_dsn) as conn:
        assert conn.row("SELECT count(*) FROM sched_workers") == (0,)  # it never registered
        migrate.apply(conn)
    started = run_sched(empty_dsn, "worker", "--app", "noop_app", "--burst", env=env, timeout=60)
    assert started.returncode == 0, started.stderr[-2000:]
