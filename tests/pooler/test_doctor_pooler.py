"""The doctor's horizon check behind PgBouncer in transaction mode: it keeps no session state, and its own
server connection, whichever the pool hands it, is never named as a holder."""

from __future__ import annotations

import time

import psycopg

from pgsched import doctor
from pgsched.doctor import Thresholds


def test_doctor_names_a_holder_through_the_pool_and_never_itself(dsn: str, pooled_dsn: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    limits = Thresholds(horizon_age_s=0.5, horizon_xids=0)
    with psycopg.connect(dsn, application_name="direct-holder") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT txid_current()")  # a transaction id: every snapshot taken here has it as xmin
        time.sleep(0.8)
        for _ in range(3):  # the pool may hand each run another server connection
            check = next(c for c in doctor.diagnose(pooled_dsn, limits).checks if c.name == "transactions")
            here = [h for h in (check.data or {})["holders"] if h["database"] == dbname]
            assert [h["who"] for h in here] == [str(holder.info.backend_pid)], here
            assert f"SELECT pg_terminate_backend({holder.info.backend_pid});" in (check.fix or "")
        holder.rollback()
