"""The doctor names what holds back vacuum of sched's tables (sessions with a snapshot or a transaction id, here or
in other databases), with the command that would end each, and says ok once they end. Holders are real second
connections; prepared transactions, slots and standbys are tested on private servers (tests/production)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest

from pgsched import db, doctor
from pgsched.doctor import Thresholds


def _horizon(dsn: str, limits: Thresholds) -> doctor.Check:
    return next(c for c in doctor.diagnose(dsn, limits).checks if c.name == "transactions")


def _dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


def _here(check: doctor.Check, dsn: str) -> list[dict[str, Any]]:
    """The holders the check found in the test's own database (other people's databases on a shared server are
    none of the test's business)."""
    return [h for h in (check.data or {})["holders"] if h["database"] == _dbname(dsn)]


def _backend_pid(conn: psycopg.Connection) -> int:
    return conn.info.backend_pid


def test_a_snapshot_and_an_idle_transaction_are_named_with_the_command_that_ends_them(dsn: str) -> None:
    limits = Thresholds(horizon_age_s=0.5)
    with (
        psycopg.connect(dsn, application_name="report-job") as reader,
        psycopg.connect(dsn, application_name="forgetful-app") as writer,
    ):
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM sched_jobs_all")  # takes the snapshot
        writer.execute("INSERT INTO sched_jobs (task) VALUES ('sched.noop')")  # holds a transaction id, then idles
        time.sleep(0.8)
        check = _horizon(dsn, limits)
        assert check.status == "warn", check.detail
        found = {h["who"]: h for h in _here(check, dsn)}
        reader_pid, writer_pid = str(_backend_pid(reader)), str(_backend_pid(writer))
        assert set(found) == {reader_pid, writer_pid}
        assert found[reader_pid]["application_name"] == "report-job"
        assert found[reader_pid]["state"] == "idle in transaction"
        assert found[reader_pid]["query"] == "SELECT count(*) FROM sched_jobs_all"
        assert found[writer_pid]["application_name"] == "forgetful-app"
        assert f"session {reader_pid} (report-job, user " in check.detail
        assert f"session {writer_pid} (forgetful-app, user " in check.detail
        assert f"SELECT pg_terminate_backend({reader_pid});" in (check.fix or "")
        assert f"SELECT pg_terminate_backend({writer_pid});" in (check.fix or "")
        assert found[reader_pid]["command"] == f"SELECT pg_terminate_backend({reader_pid});"
        assert "printed, never run" in (check.fix or "")
        reader.rollback()
        writer.rollback()
    after = _horizon(dsn, limits)
    assert _here(after, dsn) == []
    assert all(not h["this_database"] for h in (after.data or {})["holders"])


def test_a_running_statement_is_named_with_the_cancel_that_ends_it(dsn: str) -> None:
    failures: list[BaseException] = []

    def long_report() -> None:
        with psycopg.connect(dsn, application_name="long-report", autocommit=True) as report:
            try:
                report.execute("SELECT pg_sleep(20) FROM sched_jobs_all LIMIT 1")
            except psycopg.errors.QueryCanceled as exc:
                failures.append(exc)

    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("INSERT INTO sched_jobs (task) VALUES ('sched.noop')")
    runner = threading.Thread(target=long_report)
    runner.start()
    try:
        time.sleep(1.0)
        check = _horizon(dsn, Thresholds(horizon_age_s=0.5))
        [found] = _here(check, dsn)
        assert (found["application_name"], found["state"]) == ("long-report", "active")
        assert found["command"].startswith(f"SELECT pg_cancel_backend({found['who']});")
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(found["command"].split("--")[0])  # the printed command ends it
    finally:
        runner.join(30)
    assert len(failures) == 1
    assert _here(_horizon(dsn, Thresholds(horizon_age_s=0.5)), dsn) == []


def test_a_session_without_snapshot_or_transaction_id_holds_nothing(dsn: str) -> None:
    """An idle READ COMMITTED transaction that wrote nothing keeps no snapshot between statements."""
    with psycopg.connect(dsn, application_name="harmless") as idle:
        idle.execute("SELECT 1")
        time.sleep(0.8)
        assert _here(_horizon(dsn, Thresholds(horizon_age_s=0.5)), dsn) == []
        idle.rollback()


def test_the_age_threshold_decides(dsn: str) -> None:
    with psycopg.connect(dsn, application_name="holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        time.sleep(0.8)
        assert _here(_horizon(dsn, Thresholds(horizon_age_s=3600)), dsn) == []
        [found] = _here(_horizon(dsn, Thresholds(horizon_age_s=0.5)), dsn)
        assert found["application_name"] == "holder"
        holder.rollback()


def test_the_transaction_count_threshold_decides(dsn: str) -> None:
    """A young snapshot is named once enough transactions have run since it was taken."""
    limits = Thresholds(horizon_age_s=3600, horizon_xids=20)
    with psycopg.connect(dsn, application_name="holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        assert _here(_horizon(dsn, Thresholds(horizon_age_s=3600, horizon_xids=1_000_000)), dsn) == []
        with psycopg.connect(dsn, autocommit=True) as busy:
            for _ in range(25):
                busy.execute("SELECT txid_current()")  # one transaction id each
        [found] = _here(_horizon(dsn, limits), dsn)
        assert found["application_name"] == "holder" and found["xmin_age"] > 20
        holder.rollback()


def test_past_max_transaction_age_it_fails(dsn: str) -> None:
    with psycopg.connect(dsn, application_name="holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        time.sleep(0.8)
        assert _horizon(dsn, Thresholds(horizon_age_s=0.5)).status == "warn"
        # The lower failure limit also finds it, whatever the warning threshold.
        assert _horizon(dsn, Thresholds(horizon_age_s=3600, max_transaction_age_s=0.5)).status == "fail"
        holder.rollback()


def test_other_databases_count_only_with_a_transaction_id(dsn: str, empty_dsn: str) -> None:
    """Another database's snapshot does not hold back vacuum here; its transaction id does (every snapshot taken
    here counts it as running). And the doctor's own session, whose snapshot that id holds back, is never one."""
    limits = Thresholds(horizon_age_s=0.5, horizon_xids=0)
    with psycopg.connect(empty_dsn, application_name="elsewhere") as other:
        other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT 1")
        time.sleep(0.8)
        assert _here(_horizon(dsn, limits), empty_dsn) == []
        other.execute("SELECT txid_current()")
        check = _horizon(dsn, limits)
        [found] = _here(check, empty_dsn)
        assert found["who"] == str(_backend_pid(other)) and not found["this_database"]
        assert f"database {_dbname(empty_dsn)}" in check.detail
        assert "while any statement runs here" in check.detail
        # The doctor's snapshot has that old transaction id as its xmin: it must not name itself.
        assert [h for h in _here(check, dsn) if h["application_name"] == "sched-doctor"] == []
        other.rollback()


def test_the_doctors_own_connection_does_not_trip_it(dsn: str) -> None:
    [found] = [c for c in doctor.diagnose(dsn, Thresholds(horizon_age_s=0, horizon_xids=0)).checks
               if c.name == "transactions"]  # fmt: skip
    assert _here(found, dsn) == []


def test_the_queue_impact_is_measured_while_something_holds_it(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("ALTER TABLE sched_jobs SET (autovacuum_enabled = false)")
        raw.execute("INSERT INTO sched_jobs (task) SELECT 'sched.noop' FROM generate_series(1, 2000)")
    with psycopg.connect(dsn, application_name="holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        with psycopg.connect(dsn, autocommit=True) as raw:
            # What workers do to claimed and finished jobs: the ready index keeps their entries.
            raw.execute("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE id <= 1990")
            raw.execute("VACUUM sched_jobs")  # removes nothing: the holder may still see those rows
            raw.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(0.6)
        check = _horizon(dsn, Thresholds(horizon_age_s=0.5))
        impact = (check.data or {})["impact"]
        assert impact["dead"] >= 1990 and impact["ready"] == 10
        assert impact["ready_index_bytes"] > impact["ready_index_needed_bytes"]
        probe = impact["probe"]
        assert probe["queue"] == "default" and probe["index"] == "sched_jobs_ready"
        # The walk passes the dead entries of the 1990 finished jobs before it meets a ready one.
        assert probe["pages"] > 10, probe
        assert "reading default's ready jobs from the front through sched_jobs_ready" in check.detail
        holder.rollback()
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("VACUUM sched_jobs")
        raw.execute("SELECT pg_stat_force_next_flush()")
    check = _horizon(dsn, Thresholds(horizon_age_s=0.5))
    assert _here(check, dsn) == [] and (check.data or {})["impact"]["dead"] < 1990


def test_a_role_that_cannot_see_other_sessions_still_names_their_transaction_ids(dsn: str, server_dsn: str) -> None:
    role = f"doctor_viewer_{_dbname(dsn)}"[:63]
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT CONNECT ON DATABASE "{_dbname(dsn)}" TO "{role}"')
    try:
        viewer = psycopg.conninfo.make_conninfo(dsn, user=role)
        with psycopg.connect(dsn, application_name="hidden-writer") as writer:
            writer.execute("INSERT INTO sched_jobs (task) VALUES ('sched.noop')")
            with psycopg.connect(dsn, autocommit=True) as busy:
                for _ in range(5):
                    busy.execute("SELECT txid_current()")
            limits = Thresholds(horizon_age_s=3600, horizon_xids=3)
            with db.connect(viewer) as conn:  # the check alone: this role may not read sched's tables
                check = doctor.check_horizon(*doctor.horizon_facts(conn, None, limits), limits)
            visibility = (check.data or {})["visibility"]
            assert visibility["sees_all"] is False and visibility["hidden_here"] >= 1
            assert f"show {role} no start time, state, address or query" in check.detail
            assert "pg_read_all_stats" in check.detail
            # Its transaction id is visible to every role: it is still named, by its transaction count.
            assert check.status == "warn", check.detail
            [found] = _here(check, dsn)
            assert found["hidden"] and found["application_name"] == "hidden-writer" and found["query"] is None
            assert found["command"] == f"SELECT pg_terminate_backend({writer.info.backend_pid});"
            assert "(hidden-writer, user " in check.detail and "start, state and query hidden" in check.detail
            writer.rollback()
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'REVOKE CONNECT ON DATABASE "{_dbname(dsn)}" FROM "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_cli_warns_with_the_command_and_does_not_fail_for_it(dsn: str, sched) -> None:
    with psycopg.connect(dsn, application_name="cli-holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        pid = _backend_pid(holder)
        time.sleep(1.2)
        result = sched("doctor", "--json", "--horizon-age", "1s")
        # A warning is no failure (a server with autovacuum off fails another check: that one may be named).
        assert "transactions" not in result.stderr, result.stderr
        check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "transactions")
        assert check["status"] == "warn"
        [found] = [h for h in check["data"]["holders"] if h["who"] == str(pid)]
        assert found["application_name"] == "cli-holder"
        assert found["command"] == f"SELECT pg_terminate_backend({pid});"
        table = sched("doctor", "--horizon-age", "1s")
        assert "cli-holder" in table.stdout and f"pg_terminate_backend({pid})" in table.stdout
        quiet = sched("doctor", "--json", "--horizon-age", "1h", "--horizon-xids", "1000000000")
        check = next(c for c in json.loads(quiet.stdout)["checks"] if c["name"] == "transactions")
        assert all(h["who"] != str(pid) for h in check["data"]["holders"])
        holder.rollback()


@pytest.mark.parametrize(("option", "value"), [("--horizon-age", "soon"), ("--horizon-xids", "-1")])
def test_cli_rejects_a_bad_horizon_threshold(sched, option: str, value: str) -> None:
    result = sched("doctor", option, value)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: "), result.stderr
