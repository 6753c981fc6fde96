"""Each doctor check passes on a healthy setup and fails, with advice, on a broken one."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from pgsched import doctor
from pgsched.db import Connection
from pgsched.doctor import Thresholds


def _by_name(dsn: str, limits: Thresholds | None = None) -> dict[str, doctor.Check]:
    return {check.name: check for check in doctor.diagnose(dsn, limits).checks}


def _add_ready_job(dsn: str, queue: str = "default", age_s: float = 0.0) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute(
            "INSERT INTO sched_jobs (queue, task, run_at) VALUES (%s, 'sched.noop', now() - make_interval(secs => %s))",
            (queue, age_s),
        )


def _add_worker(dsn: str, queue: str, heartbeat_age_s: float = 0.0) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute(
            "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, heartbeat_at) "
            "VALUES (%s, 'h', 1, %s, '{sched.noop}', 1, now() - make_interval(secs => %s))",
            (uuid.uuid4(), [queue], heartbeat_age_s),
        )


def test_database_and_migrations_pass_on_a_migrated_database(dsn: str) -> None:
    checks = _by_name(dsn)
    assert checks["database"].status == "ok"
    assert "PostgreSQL" in checks["database"].detail
    assert checks["migrations"].status == "ok"


def test_unreachable_database_fails_with_advice_and_no_password() -> None:
    report = doctor.diagnose("postgresql://root:Sup3rS3cret@127.0.0.1:1/x")
    assert not report.ok
    [check] = report.checks
    assert check.name == "database" and check.status == "fail"
    assert "SCHED_DATABASE_URL" in (check.fix or "")
    assert "Sup3rS3cret" not in json.dumps(report.as_json())


def test_old_server_version_fails() -> None:
    assert doctor.check_server_version(120000).status == "fail"
    assert doctor.check_server_version(130000).status == "ok"


def test_pending_migrations_fail_and_skip_table_checks(empty_dsn: str) -> None:
    checks = _by_name(empty_dsn)
    assert checks["migrations"].status == "fail"
    assert checks["migrations"].fix == "run `sched migrate`"
    assert checks["workers"].status == "skip"
    assert checks["transactions"].status == "ok"


def test_ready_queue_without_live_worker_fails(dsn: str) -> None:
    assert _by_name(dsn)["workers"].status == "ok"
    _add_ready_job(dsn, "mail")
    _add_worker(dsn, "mail", heartbeat_age_s=120)  # dead: no beat for 2 minutes
    check = _by_name(dsn)["workers"]
    assert check.status == "fail"
    assert "mail (1 ready)" in check.detail
    assert "sched worker --queue mail" in (check.fix or "")


def test_ready_queue_with_live_worker_passes(dsn: str) -> None:
    _add_ready_job(dsn, "mail")
    _add_worker(dsn, "mail")
    assert _by_name(dsn)["workers"].status == "ok"


def test_paused_queue_needs_no_worker_and_has_no_lag(dsn: str) -> None:
    _add_ready_job(dsn, "mail", age_s=600)
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("INSERT INTO sched_queues (queue, paused) VALUES ('mail', true)")
    checks = _by_name(dsn)
    assert checks["workers"].status == "ok"
    assert checks["lag"].status == "ok"


def test_lag_over_the_threshold_fails(dsn: str) -> None:
    _add_ready_job(dsn, "reports", age_s=90)
    assert _by_name(dsn, Thresholds(max_lag_s=120))["lag"].status == "ok"
    check = _by_name(dsn, Thresholds(max_lag_s=60))["lag"]
    assert check.status == "fail"
    assert "reports" in check.detail and "limit 1m" in check.detail


def test_dead_tuples_fail_until_vacuumed(dsn: str) -> None:
    limits = Thresholds(min_dead_tuples=50, max_dead_ratio=0.5)
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("INSERT INTO sched_jobs (task) SELECT 'sched.noop' FROM generate_series(1, 200)")
        raw.execute("DELETE FROM sched_jobs WHERE id > 10")
        raw.execute("SELECT pg_stat_force_next_flush()")
    check = _by_name(dsn, limits)["vacuum"]
    assert check.status == "fail", check.detail
    assert "VACUUM" in (check.fix or "")
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("VACUUM sched_jobs")
        raw.execute("SELECT pg_stat_force_next_flush()")
    assert _by_name(dsn, limits)["vacuum"].status == "ok"


def test_autovacuum_disabled_on_the_table_fails(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("ALTER TABLE sched_jobs SET (autovacuum_enabled = false)")
    check = _by_name(dsn)["autovacuum"]
    assert check.status == "fail"
    assert "RESET (autovacuum_enabled)" in (check.fix or "")


@pytest.mark.parametrize(
    ("server_on", "reloptions", "status"),
    [(True, [], "ok"), (False, [], "fail"), (True, ["autovacuum_enabled=false"], "fail")],
)
def test_autovacuum_judgement(server_on: bool, reloptions: list[str], status: str) -> None:
    health = {
        "reloptions": [*reloptions, "autovacuum_vacuum_scale_factor=0.01"],
        "autovacuum_on": server_on,
        "scale_factor": 0.2,
        "threshold": 50,
        "autovacuum_count": 3,
    }
    check = doctor.check_autovacuum(health)
    assert check.status == status
    assert "scale factor 0.01" in check.detail


def test_long_transaction_holding_a_snapshot_fails(dsn: str, conn: Connection) -> None:
    limits = Thresholds(max_transaction_age_s=0.5)
    with psycopg.connect(dsn, application_name="holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM sched_jobs_all")
        time.sleep(0.8)
        check = _by_name(dsn, limits)["transactions"]
        assert check.status == "fail"
        assert "(holder, user " in check.detail and "idle in transaction" in check.detail
        assert f"pg_terminate_backend({holder.info.backend_pid})" in (check.fix or "")
        holder.rollback()
    # Other databases' transactions on a shared server may still be listed, but none of this one's.
    after = _by_name(dsn, limits)["transactions"]
    assert all(not h["this_database"] for h in (after.data or {})["holders"])


def test_cli_prints_checks_and_exits_1_on_failure(dsn: str, sched) -> None:
    _add_ready_job(dsn, "orphan")
    result = sched("doctor", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    workers = next(c for c in report["checks"] if c["name"] == "workers")
    assert workers["status"] == "fail" and "orphan" in workers["detail"]
    assert result.stderr.strip().startswith("Error: ") and "workers" in result.stderr
    table = sched("doctor")
    assert table.returncode == 1
    assert "sched worker --queue orphan" in table.stdout


def test_cli_rejects_a_bad_threshold(sched) -> None:
    result = sched("doctor", "--max-lag", "soon")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: invalid --max-lag 'soon'")


def test_ready_task_without_a_handler_suggests_app(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("INSERT INTO sched_jobs (queue, task) VALUES ('mail', 'send_email')")
    _add_worker(dsn, "mail")  # handles only sched.noop
    check = _by_name(dsn)["workers"]
    assert check.status == "fail"
    assert "no live worker handles task send_email on mail (1 ready)" in check.detail
    assert "--app MODULE" in (check.fix or "") and "send_email" in (check.fix or "")


def test_a_table_mostly_dead_is_a_warning_that_says_why_and_what_to_do(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("ALTER TABLE sched_jobs SET (autovacuum_enabled = false)")
        raw.execute("INSERT INTO sched_jobs (task) SELECT 'sched.noop' FROM generate_series(1, 300)")
        raw.execute("DELETE FROM sched_jobs WHERE id > 100")
        raw.execute("SELECT pg_stat_force_next_flush()")
    check = _by_name(dsn)["vacuum"]
    assert check.status == "warn", check.detail
    assert "(67% dead)" in check.detail and "claims read past them" in check.detail
    assert "VACUUM" in (check.fix or "")
