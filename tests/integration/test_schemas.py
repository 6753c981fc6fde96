"""An installation in a schema of its own (SCHED_SCHEMA): every query names sched's objects through that schema,
never through the caller's search_path, and two schemas in one database are two independent installations:
their jobs, workers, wake-ups, cancel requests and reaper locks never meet."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.cli import run_sched

from pgsched import db, repository, sqlfiles
from pgsched.models import NewJob, Outcome, OutcomeKind

BARE_OBJECT = re.compile(
    r"(?<![.\w])sched_(?:jobs|job_deps|workers|queues|schedules|migrations|job_state|job_lease_seq|jobs_id_seq)\b"
)


def test_every_query_names_sched_objects_only_through_the_schema() -> None:
    for name, text in sqlfiles.queries().items():
        qualified = sqlfiles.qualify(text, "tenant_b")
        assert not BARE_OBJECT.search(qualified), name
        for shared in ("sched_wakeup", "sched_cancel", "sched_reaper", "sched_migrate"):
            assert f"'{shared}'" not in qualified, name
    assert sqlfiles.qualify("SELECT 1 FROM sched_jobs_incoming", "tenant_b") == "SELECT 1 FROM sched_jobs_incoming"


def counts(dsn: str, schema: str) -> dict[str, int]:
    result = run_sched(dsn, "status", "--json", schema=schema)
    assert result.returncode == 0, result.stderr
    (queue,) = json.loads(result.stdout)["queues"]
    return {state: queue[state] for state in ("queued", "succeeded", "cancelled")}


def test_two_schemas_in_one_database_are_independent_installations(empty_dsn: str) -> None:
    for schema in ("public", "tenant_b"):
        assert run_sched(empty_dsn, "migrate", schema=schema).returncode == 0
    assert run_sched(empty_dsn, "add", "sched.noop", schema="public").stdout.strip() == "1"
    assert run_sched(empty_dsn, "add", "sched.noop", schema="public").stdout.strip() == "2"
    with psycopg.connect(empty_dsn, autocommit=True) as listener:
        listener.execute('LISTEN "sched_wakeup"')
        listener.execute('LISTEN "sched_wakeup.tenant_b"')
        assert run_sched(empty_dsn, "add", "sched.noop", schema="tenant_b").stdout.strip() == "1"
        heard = {note.channel for note in listener.notifies(timeout=2, stop_after=1)}
    assert heard == {"sched_wakeup.tenant_b"}

    # Job 1 of one installation is not job 1 of the other.
    assert run_sched(empty_dsn, "cancel", "1", schema="tenant_b").returncode == 0
    assert counts(empty_dsn, "public") == {"queued": 2, "succeeded": 0, "cancelled": 0}
    assert run_sched(empty_dsn, "add", "sched.noop", schema="tenant_b").stdout.strip() == "2"
    drained = run_sched(empty_dsn, "worker", "--burst", schema="tenant_b")
    assert drained.returncode == 0, drained.stderr
    assert counts(empty_dsn, "tenant_b") == {"queued": 0, "succeeded": 1, "cancelled": 1}
    assert counts(empty_dsn, "public") == {"queued": 2, "succeeded": 0, "cancelled": 0}
    with psycopg.connect(empty_dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables WHERE table_name LIKE 'sched\\_%%' "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    # Each: 8 tables, the history's 16 partitions and the view of both.
    assert tables == [("public", 26), ("tenant_b", 26)]


def test_no_query_depends_on_the_callers_search_path(dsn: str) -> None:
    # A caller whose search_path finds nothing of sched's (its own schema first, public left out).
    schema = sqlfiles.schema()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA app")
    elsewhere = make_conninfo(dsn, options="-c search_path=app")
    with db.connect(elsewhere) as conn:
        assert conn.row("SELECT to_regclass('sched_jobs')") == (None,)
        job_id = repository.enqueue(conn, NewJob(task="t", key="k")).id
        (dupe,) = repository.enqueue_many(conn, [NewJob(task="t", key="k")])
        assert dupe == (job_id, True)

        async def cycle() -> tuple[int, ...]:
            worker = str(uuid.uuid4())
            runs = await db.connect_async(elsewhere)
            try:
                await repository.register_worker(
                    runs, worker, "h", 1, ["default"], ["t"], 1, stale_after_s=30, timeout_grace_s=10
                )
                (claimed,) = await repository.claim_jobs(runs, worker, "default", ["t"], 10)
                await repository.record_outcomes(runs, worker, [Outcome(job_id, claimed.lease, OutcomeKind.SUCCEEDED)])
                await repository.reap_stale(runs)
                return (claimed.id,)
            finally:
                await runs.close()

        assert asyncio.run(cycle()) == (job_id,)
        assert repository.get_job(conn, job_id)["state"] == "succeeded"
        assert [q["succeeded"] for q in repository.count_by_queue(conn)] == [1]
    assert schema == sqlfiles.schema()


def test_an_invalid_schema_name_is_refused_before_anything_is_written(empty_dsn: str) -> None:
    result = run_sched(empty_dsn, "migrate", schema="Tenant-B")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: invalid schema name 'Tenant-B' (SCHED_SCHEMA): use 1-48 lowercase letters, digits or _, "
        "not starting with a digit"
    )
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname ILIKE 'tenant%%'").fetchone() == (0,)


@pytest.mark.parametrize("name", ["public", "tenant_b"])
def test_shared_names_are_the_bare_names_in_public_only(name: str) -> None:
    expected = "sched_wakeup" if name == "public" else f"sched_wakeup.{name}"
    assert sqlfiles.shared_name("sched_wakeup", name) == expected


def test_the_schema_comes_from_the_option_the_environment_or_a_dot_env_file(empty_dsn: str, tmp_path) -> None:
    assert run_sched(empty_dsn, "migrate", schema="tenant_b").returncode == 0
    assert run_sched(empty_dsn, "add", "sched.noop", schema="tenant_b").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "SCHED_SCHEMA"}
    base = [sys.executable, "-m", "pgsched"]
    by_option = subprocess.run(
        [*base, "--schema", "tenant_b", "status", "--json"],
        capture_output=True,
        text=True,
        env={**env, "SCHED_DATABASE_URL": empty_dsn},
        cwd=tempfile.gettempdir(),
    )
    (tmp_path / ".env").write_text("SCHED_SCHEMA=tenant_b\n")
    by_dotenv = subprocess.run(
        [*base, "status", "--json"],
        capture_output=True,
        text=True,
        env={**env, "SCHED_DATABASE_URL": empty_dsn},
        cwd=tmp_path,
    )
    for result in (by_option, by_dotenv):
        assert result.returncode == 0, result.stderr
        assert [q["queued"] for q in json.loads(result.stdout)["queues"]] == [1]
