"""The doctor's horizon check on private servers, for what the shared test server cannot have or must not be
given: prepared transactions (max_prepared_transactions), replication slots and a streaming standby with
hot_standby_feedback, and a managed-style owner who is no superuser, in a schema of its own."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from support.private_server import PrivateServer, create_database

from pgsched import doctor
from pgsched.doctor import Thresholds

pytestmark = pytest.mark.slow

SETTINGS = {
    "max_prepared_transactions": "4",
    "wal_level": "logical",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "wal_receiver_status_interval": "1s",
}


def _horizon(dsn: str, limits: Thresholds) -> doctor.Check:
    return next(c for c in doctor.diagnose(dsn, limits).checks if c.name == "transactions")


def _holders(check: doctor.Check) -> list[dict[str, Any]]:
    return (check.data or {})["holders"]


def _burn_xids(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as busy:
        for _ in range(count):
            busy.execute("SELECT txid_current()")


@pytest.fixture
def server(make_server) -> PrivateServer:
    return make_server(settings=SETTINGS).launch()


def test_prepared_transactions_here_and_elsewhere_are_named_with_rollback_prepared(server: PrivateServer) -> None:
    dsn = create_database(server)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE other")
    limits = Thresholds(horizon_age_s=0.5)
    assert _horizon(dsn, limits).status == "ok"
    with psycopg.connect(dsn) as here:
        here.execute("INSERT INTO sched_jobs (task) VALUES ('sched.noop')")
        here.execute("PREPARE TRANSACTION 'nightly''s batch'")
    with psycopg.connect(server.dsn("other")) as there:
        there.execute("SELECT txid_current()")
        there.execute("PREPARE TRANSACTION 'other-db'")
    time.sleep(0.8)
    check = _horizon(dsn, limits)
    assert check.status == "warn", check.detail
    found = {h["who"]: h for h in _holders(check)}
    assert set(found) == {"nightly's batch", "other-db"}
    assert found["nightly's batch"]["kind"] == "prepared transaction"
    assert found["nightly's batch"]["role"] == "postgres" and found["nightly's batch"]["this_database"]
    assert "prepared transaction 'nightly''s batch' (user postgres, prepared)" in check.detail
    assert "ROLLBACK PREPARED 'nightly''s batch';" in (check.fix or "")
    assert found["other-db"]["command"] == "ROLLBACK PREPARED 'other-db'; -- connected to database other"
    # Past --max-transaction-age, the one in this database fails.
    assert _horizon(dsn, Thresholds(horizon_age_s=0.5, max_transaction_age_s=0.5)).status == "fail"
    # The printed commands do end them.
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(found["nightly's batch"]["command"])
    with psycopg.connect(server.dsn("other"), autocommit=True) as admin:
        admin.execute(found["other-db"]["command"].split(" --")[0])
    after = _horizon(dsn, limits)
    assert (after.status, _holders(after)) == ("ok", []), after.detail


def test_a_standby_with_feedback_then_its_abandoned_slot(server: PrivateServer) -> None:
    dsn = create_database(server)
    limits = Thresholds(horizon_age_s=3600, horizon_xids=20)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_create_physical_replication_slot('doctor_standby', true)")
    # A slot reserving WAL holds no xmin: it is no horizon holder.
    _burn_xids(dsn, 25)
    assert _horizon(dsn, limits).status == "ok"
    standby = server.standby(
        "reports-replica", settings={"hot_standby_feedback": "on", "primary_slot_name": "'doctor_standby'"}
    )
    with psycopg.connect(standby.dsn("sched")) as report:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT count(*) FROM sched_jobs_all")  # the standby's feedback now carries this snapshot
        deadline = time.monotonic() + 30
        while True:
            _burn_xids(dsn, 25)
            check = _horizon(dsn, limits)
            if check.status == "warn" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert check.status == "warn", check.detail
        [slot] = _holders(check)
        assert (slot["kind"], slot["who"], slot["state"]) == ("physical replication slot", "doctor_standby", "active")
        assert slot["xmin_age"] > 20 and slot["holds_jobs"]
        assert "physical replication slot 'doctor_standby' (active) xmin " in check.detail
        assert slot["command"].startswith("SELECT pg_drop_replication_slot('doctor_standby');")
        assert "once the standby" in slot["command"]
        report.rollback()
    standby.stop()
    # Abandoned: the slot keeps the xmin its standby last reported.
    deadline = time.monotonic() + 30
    while True:
        check = _horizon(dsn, limits)
        [slot] = _holders(check)
        if slot["state"] == "inactive" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert slot["state"] == "inactive" and check.status == "warn"
    assert slot["command"] == "SELECT pg_drop_replication_slot('doctor_standby');"
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(slot["command"])
    assert _horizon(dsn, limits).status == "ok"


def test_a_standby_without_slot_is_named_by_its_feedback(server: PrivateServer) -> None:
    dsn = create_database(server)
    limits = Thresholds(horizon_age_s=3600, horizon_xids=20)
    standby = server.standby("analytics", settings={"hot_standby_feedback": "on"})
    with psycopg.connect(standby.dsn("sched")) as report:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT count(*) FROM sched_jobs_all")
        deadline = time.monotonic() + 30
        while True:
            _burn_xids(dsn, 25)
            check = _horizon(dsn, limits)
            if check.status == "warn" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert check.status == "warn", check.detail
        [found] = _holders(check)
        assert (found["kind"], found["application_name"], found["client_addr"]) == (
            "standby",
            "analytics",
            "127.0.0.1",
        )
        assert found["command"].startswith("-- on standby analytics: end its long query")
        report.rollback()


def test_a_logical_slot_holds_only_the_catalogs(server: PrivateServer) -> None:
    dsn = create_database(server)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_create_logical_replication_slot('doctor_cdc', 'test_decoding')")
    _burn_xids(dsn, 25)
    check = _horizon(dsn, Thresholds(horizon_age_s=3600, horizon_xids=20))
    assert check.status == "ok", check.detail
    [slot] = _holders(check)
    assert slot["kind"] == "logical replication slot" and not slot["holds_jobs"]
    assert slot["catalog_xmin_age"] > 20
    assert "holds back only the system catalogs, not sched's tables" in check.detail
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_drop_replication_slot('doctor_cdc')")


def test_an_owner_who_is_no_superuser_in_its_own_schema(server: PrivateServer, sched_at) -> None:
    """A managed server's owner sees its own sessions in full; another role's show only their transaction id and
    xmin (and that is said), which is enough to name them."""
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE ROLE app_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        admin.execute("CREATE DATABASE app OWNER app_owner")
    url = f"postgresql://app_owner@127.0.0.1:{server.port}/app"
    env = {"SCHED_SCHEMA": "jobs"}
    assert sched_at(url, "migrate", env=env).returncode == 0
    with (
        psycopg.connect(url, application_name="owner-report") as own,
        psycopg.connect(server.dsn("app"), application_name="admin-console") as other,
    ):
        own.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        own.execute("SELECT count(*) FROM jobs.sched_jobs")
        other.execute("SELECT txid_current()")
        _burn_xids(server.dsn("app"), 25)
        time.sleep(1.2)
        result = sched_at(url, "doctor", "--json", "--horizon-age", "1s", "--horizon-xids", "20", env=env)
        check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "transactions")
        assert check["status"] == "warn", check["detail"]
        found = {h["application_name"]: h for h in check["data"]["holders"]}
        assert set(found) == {"owner-report", "admin-console"}
        mine, theirs = found["owner-report"], found["admin-console"]
        assert mine["who"] == str(own.info.backend_pid) and not mine["hidden"]
        assert mine["state"] == "idle in transaction" and mine["query"] == "SELECT count(*) FROM jobs.sched_jobs"
        assert theirs["who"] == str(other.info.backend_pid) and theirs["hidden"] and theirs["state"] is None
        assert "1 session(s) of other roles in this database" in check["detail"]
        assert "show app_owner no start time, state, address or query" in check["detail"]
        own.rollback()
        other.rollback()
