"""Least privilege: ``sched migrate --roles`` creates sched_producer and sched_worker; login roles that are members
can do their job through the real CLI and nothing more (no claims for producers, no deletes or DDL for either)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.connections import run_async

from pgsched import db, repository
from pgsched.errors import DatabaseError
from pgsched.models import NewJob
from pgsched.sqlfiles import query, sql_dir

LOGINS = {"producer": "sched_test_producer_login", "worker": "sched_test_worker_login"}


def _ensure_login(server_dsn: str, login: str, group: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            f"DO $$ BEGIN CREATE ROLE {login} LOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        admin.execute(f"GRANT {group} TO {login}")


@pytest.fixture
def roles(sched: Callable, server_dsn: str, dsn: str) -> dict[str, str]:
    """DSNs of a producer login and a worker login on the test's database, after ``sched migrate --roles``."""
    done = sched("migrate", "--roles")
    assert done.returncode == 0, done.stderr
    assert "granted sched_producer and sched_worker" in done.stderr
    for kind, login in LOGINS.items():
        _ensure_login(server_dsn, login, f"sched_{kind}")
    return {kind: make_conninfo(dsn, user=login) for kind, login in LOGINS.items()}


def _refused(conn: db.Connection, sql: str, params: dict | None = None) -> str:
    with pytest.raises(DatabaseError) as info:
        conn.run(sql, params)
    message = info.value.message
    assert "permission denied" in message or "must be owner" in message, message
    return message


def _claim(dsn: str, queue: str = "default") -> list:
    async def run(conn: db.AsyncConnection) -> list:
        return await repository.claim_jobs(conn, "00000000-0000-0000-0000-000000000001", queue, ["t"], 10)

    return run_async(dsn, run)


DDL = [
    "DROP TABLE sched_jobs",
    "ALTER TABLE sched_jobs ADD COLUMN evil int",
    "TRUNCATE sched_jobs",
    "CREATE INDEX sched_evil ON sched_jobs (task)",
    "CREATE TABLE sched_evil (i int)",
    "DROP TABLE sched_workers",
    "ALTER TABLE sched_queues DISABLE ROW LEVEL SECURITY",
]


def test_roles_are_nologin_groups_and_rerunning_changes_nothing(
    roles: dict[str, str], sched: Callable, conn: db.Connection
) -> None:
    snapshot = (
        "SELECT c.relname, a.grantee::regrole::text, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.relname LIKE 'sched%%' AND a.grantee::regrole::text LIKE 'sched_%%' ORDER BY 1, 2, 3"
    )
    before = conn.rows(snapshot)
    assert ("sched_jobs", "sched_producer", "INSERT") in before
    again = sched("migrate", "--roles")
    assert again.returncode == 0, again.stderr
    assert conn.rows(snapshot) == before
    rows = conn.rows(
        "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname IN ('sched_producer', 'sched_worker') ORDER BY 1"
    )
    assert rows == [("sched_producer", False, False, False, False), ("sched_worker", False, False, False, False)]
    # Neither role holds DELETE on the job table; only the worker deletes (dead) worker rows, and the group
    # buckets that are full again (docs/protocol.md, "Group rates").
    assert not any(table == "sched_jobs" and privilege == "DELETE" for table, _, privilege in before)
    deleters = {(table, role) for table, role, privilege in before if privilege == "DELETE"}
    assert deleters == {("sched_workers", "sched_worker"), ("sched_group_buckets", "sched_worker")}


def test_a_grant_outside_the_script_is_revoked_on_rerun(roles: dict[str, str], sched: Callable, conn) -> None:
    conn.run("GRANT DELETE ON sched_jobs TO sched_producer")
    assert sched("migrate", "--roles").returncode == 0
    with db.connect(roles["producer"]) as producer:
        _refused(producer, "DELETE FROM sched_jobs")


def test_every_sched_table_has_a_grant_decision(conn: db.Connection) -> None:
    script = (sql_dir() / "roles.sql").read_text()
    tables = [
        name
        for (name,) in conn.rows(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p', 'v') AND NOT relispartition "
            "AND relname LIKE 'sched\\_%%' AND relnamespace = current_schema()::regnamespace"
        )
    ]
    assert "sched_jobs" in tables
    missing = [t for t in tables if t not in script]
    assert missing == []


def test_check_cannot_be_combined_with_roles(sched: Callable) -> None:
    done = sched("migrate", "--check", "--roles")
    assert done.returncode == 2
    assert done.stderr == "Error: --check cannot be combined with --roles\n"


# --- sched_producer ------------------------------------------------------------------------------------------


def test_producer_adds_jobs_and_reads_status(roles: dict[str, str], sched: Callable, tmp_path: Path) -> None:
    env = {"SCHED_DATABASE_URL": roles["producer"]}
    first = sched("add", "t", "--key", "k1", "--payload", '{"a": 1}', env=env)
    assert first.returncode == 0, first.stderr
    parent = int(first.stdout)
    child = sched("add", "t", "--after", str(parent), env=env)
    assert child.returncode == 0, child.stderr
    dup = sched("add", "t", "--key", "k1", "--json", env=env)
    assert json.loads(dup.stdout) == {"id": parent, "deduplicated": True}
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"task": "t"}\n{"task": "t", "key": "k2"}\n{"task": "t", "key": "k1"}\n')
    bulk = sched("add", "--jsonl", str(path), env=env)
    assert bulk.returncode == 0, bulk.stderr
    assert bulk.stdout.split()[-1] == str(parent)
    status = sched("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queues"][0]["waiting"] == 1
    one = sched("status", child.stdout.strip(), "--json", env=env)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["depends_on"] == [parent]


def test_producer_cannot_claim_delete_change_state_or_ddl(
    roles: dict[str, str], sched: Callable, conn: db.Connection
) -> None:
    job_id = repository.enqueue(conn, NewJob(task="t")).id
    with pytest.raises(DatabaseError, match="permission denied"):
        _claim(roles["producer"])
    with db.connect(roles["producer"]) as producer:
        _refused(
            producer, "UPDATE sched_jobs SET state = 'cancelled', finished_at = now() WHERE id = %(id)s", {"id": job_id}
        )
        _refused(producer, "UPDATE sched_jobs SET payload = '{\"evil\": 1}' WHERE id = %(id)s", {"id": job_id})
        _refused(producer, "DELETE FROM sched_jobs")
        _refused(producer, "DELETE FROM sched_job_deps")
        _refused(producer, "DELETE FROM sched_job_history")
        # Finishing a job (which moves its row into the history) is the worker's alone.
        _refused(
            producer,
            "SELECT * FROM sched_finish_succeeded(gen_random_uuid(), ARRAY[%(id)s]::bigint[], '{1}', NULL)",
            {"id": job_id},
        )
        _refused(
            producer,
            "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency) "
            "VALUES (gen_random_uuid(), 'h', 1, '{default}', '{t}', 1)",
        )
        _refused(producer, "UPDATE sched_queues SET paused = true")
        _refused(producer, "INSERT INTO sched_queues (queue, paused) VALUES ('q', true)")
        _refused(producer, "SELECT * FROM sched_schedules")
        for statement in DDL:
            _refused(producer, statement)
    cleanup = sched("cleanup", "--older-than", "1s", env={"SCHED_DATABASE_URL": roles["producer"]})
    assert cleanup.returncode == 1
    assert "permission denied" in cleanup.stderr
    assert conn.row("SELECT state::text, payload FROM sched_jobs_all WHERE id = %s", [job_id]) == ("queued", {})


# --- sched_worker --------------------------------------------------------------------------------------------


def test_worker_claims_runs_and_records_outcomes(roles: dict[str, str], sched: Callable, conn: db.Connection) -> None:
    ok = int(sched("add", "sched.noop").stdout)
    after = int(sched("add", "sched.noop", "--after", str(ok)).stdout)
    failing = int(sched("add", "sched.fail", "--max-attempts", "1").stdout)
    doomed = int(sched("add", "sched.noop", "--after", str(failing)).stdout)
    env = {"SCHED_DATABASE_URL": roles["worker"]}
    run = sched("worker", "--burst", "--concurrency", "4", env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    states = dict(conn.rows("SELECT id, state::text FROM sched_jobs_all"))
    assert states == {ok: "succeeded", after: "succeeded", failing: "failed", doomed: "cancelled"}
    assert conn.row("SELECT count(*) FROM sched_workers")[0] == 0
    reap = sched("reap", "--json", env=env)
    assert reap.returncode == 0, reap.stderr
    status = sched("status", "--json", env=env)
    assert status.returncode == 0, status.stderr


def test_worker_claims_a_fair_queue_with_group_rates(
    roles: dict[str, str], sched: Callable, conn: db.Connection
) -> None:
    # The first fair claim makes the queue's row; the claim charges and deletes group buckets
    # (docs/protocol.md, "Group rates", "Fair sharing").
    for group in ("a", "a", "b"):
        assert sched("add", "t", "--queue", "fair", "--group", group).returncode == 0
    assert len(_claim(roles["worker"], "fair")) == 3
    assert sched("queue", "limit", "rated", "--group-rate", "1/h", "--group-burst", "1").returncode == 0
    for group in ("a", "a", "b"):
        assert sched("add", "t", "--queue", "rated", "--group", group).returncode == 0
    assert len(_claim(roles["worker"], "rated")) == 2
    assert conn.row("SELECT count(*) FROM sched_group_buckets WHERE queue = 'rated'") == (2,)
    assert conn.row("SELECT count(*) FROM sched_queues WHERE queue = 'fair'") == (1,)


def test_worker_reaps_dead_workers(roles: dict[str, str], sched: Callable, conn: db.Connection) -> None:
    job_id = int(sched("add", "t").stdout)
    conn.run(
        "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, heartbeat_at) "
        "VALUES ('00000000-0000-0000-0000-00000000dead', 'gone', 1, '{default}', '{t}', 1, now() - interval '1h')"
    )
    conn.run(
        "UPDATE sched_jobs SET state = 'running', attempt = 1, started_at = now(), "
        "worker_id = '00000000-0000-0000-0000-00000000dead' WHERE id = %s",
        [job_id],
    )
    reap = sched("reap", "--json", env={"SCHED_DATABASE_URL": roles["worker"]})
    assert reap.returncode == 0, reap.stderr
    assert json.loads(reap.stdout) == {"requeued": [job_id], "failed": [], "workers_removed": 1}


def test_worker_cannot_delete_rewrite_jobs_or_ddl(roles: dict[str, str], sched: Callable, conn: db.Connection) -> None:
    job_id = int(sched("add", "t", "--payload", '{"a": 1}').stdout)
    with db.connect(roles["worker"]) as worker:
        _refused(worker, "DELETE FROM sched_jobs")
        _refused(worker, "DELETE FROM sched_job_history")
        _refused(worker, "TRUNCATE sched_job_history")
        for column, value in (("payload", "'{}'"), ("task", "'other'"), ("queue", "'other'"), ("priority", "5")):
            _refused(worker, f"UPDATE sched_jobs SET {column} = {value} WHERE id = %(id)s", {"id": job_id})
        _refused(worker, "INSERT INTO sched_job_deps (job_id, depends_on) VALUES (%(id)s, %(id)s)", {"id": job_id})
        _refused(worker, "UPDATE sched_queues SET paused = true")
        _refused(worker, "DELETE FROM sched_schedules")
        _refused(worker, "DELETE FROM sched_queues")
        for statement in DDL:
            _refused(worker, statement)
        # What it may write on a job is the state machine's columns.
        assert worker.run("UPDATE sched_jobs SET progress = '{}' WHERE id = %(id)s", {"id": job_id}) == 1
    cleanup = sched("cleanup", "--older-than", "1s", env={"SCHED_DATABASE_URL": roles["worker"]})
    assert cleanup.returncode == 1
    assert "permission denied" in cleanup.stderr
    assert conn.row("SELECT task, payload FROM sched_jobs_all WHERE id = %s", [job_id]) == ("t", {"a": 1})


def test_named_queries_exist() -> None:
    assert query("RoleCountSched")
