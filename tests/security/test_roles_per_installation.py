"""Two installations in one database are independent (README, "A schema of its own"), and so are their
least-privilege roles: a login given the worker (or producer) role of one installation must not read or change
the jobs of another. Outside public the roles carry the schema (sched_worker_tenant_a), and `sched migrate`
grants only the roles of its own installation."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.cli import run_sched

LOGIN = "sched_test_tenant_a_worker"


def test_a_worker_login_of_one_installation_cannot_read_another(empty_dsn: str, server_dsn: str) -> None:
    done = run_sched(empty_dsn, "migrate", "--roles", schema="tenant_a")
    assert done.returncode == 0, done.stderr
    assert "granted sched_producer_tenant_a and sched_worker_tenant_a their privileges" in done.stderr
    # Another team's installation in the same database, migrated without --roles.
    assert run_sched(empty_dsn, "migrate", schema="tenant_b").returncode == 0
    secret = run_sched(empty_dsn, "add", "t", "--payload", '{"card": "4111"}', schema="tenant_b")
    assert secret.returncode == 0, secret.stderr
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            f"DO $$ BEGIN CREATE ROLE {LOGIN} LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
            "END $$"
        )
        admin.execute(f"GRANT sched_worker_tenant_a TO {LOGIN}")
    with (
        psycopg.connect(make_conninfo(empty_dsn, user=LOGIN), autocommit=True) as tenant_a_worker,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        tenant_a_worker.execute("SELECT payload FROM tenant_b.sched_jobs").fetchall()
    with psycopg.connect(make_conninfo(empty_dsn, user=LOGIN), autocommit=True) as tenant_a_worker:
        # Its own installation's jobs it reads; the other's it cannot.
        assert tenant_a_worker.execute("SELECT count(*) FROM tenant_a.sched_jobs").fetchone() == (0,)
