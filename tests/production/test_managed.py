"""Managed PostgreSQL: the application's role owns its database but is neither superuser nor CREATEROLE nor
CREATEDB (as on RDS or Cloud SQL). `sched migrate` works for it; when an admin made the group roles, it grants to
them and creates none; `--roles` without CREATEROLE says in one line which privilege is missing."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.slow

ROLES = ("sched_producer", "sched_worker")


@pytest.fixture
def owner_url(make_server) -> tuple[str, str]:
    """(admin DSN, the owner's URL) on a private server where no sched role exists yet."""
    server = make_server().launch()
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE ROLE app_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        admin.execute("CREATE DATABASE app OWNER app_owner")
    return server.dsn("app"), f"postgresql://app_owner@127.0.0.1:{server.port}/app"


def existing_roles(admin_dsn: str) -> set[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        return {r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'sched\\_%'")}


def test_owner_without_createrole_migrates(owner_url, sched_at) -> None:
    admin_dsn, url = owner_url
    done = sched_at(url, "migrate")
    assert done.returncode == 0, done.stderr
    assert "0001_jobs" in done.stdout
    assert existing_roles(admin_dsn) == set()
    again = sched_at(url, "migrate")
    assert (again.returncode, again.stderr) == (0, "schema is current\n")
    # The owner can run the whole life of a job with no other privilege.
    added = sched_at(url, "add", "sched.noop")
    assert added.returncode == 0, added.stderr
    drained = sched_at(url, "worker", "--burst", "--no-listen")
    assert drained.returncode == 0, drained.stderr
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        assert c.execute("SELECT state::text FROM sched_jobs_all").fetchall() == [("succeeded",)]


def test_roles_without_createrole_names_the_missing_privilege(owner_url, sched_at) -> None:
    admin_dsn, url = owner_url
    failed = sched_at(url, "migrate", "--roles")
    assert failed.returncode == 1
    assert failed.stderr == (
        "Error: creating sched_producer and sched_worker needs the CREATEROLE privilege, which app_owner lacks;"
        " ask an admin to run `CREATE ROLE sched_producer NOLOGIN; CREATE ROLE sched_worker NOLOGIN;`"
        " (or to grant you CREATEROLE), then run `sched migrate --roles` again\n"
    )
    assert existing_roles(admin_dsn) == set()


def test_owner_grants_to_roles_an_admin_created(owner_url, sched_at) -> None:
    admin_dsn, url = owner_url
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for role in ROLES:
            admin.execute(f"CREATE ROLE {role} NOLOGIN")
        admin.execute("CREATE ROLE app_worker LOGIN IN ROLE sched_worker")
    done = sched_at(url, "migrate")
    assert done.returncode == 0, done.stderr
    assert "granted sched_producer and sched_worker their privileges" in done.stderr
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        granted = c.execute(
            "SELECT has_table_privilege('sched_producer', 'sched_jobs', 'INSERT'),"
            " has_column_privilege('sched_worker', 'sched_jobs', 'state', 'UPDATE'),"
            " has_database_privilege('sched_producer', current_database(), 'TEMPORARY')"
        ).fetchone()
    assert granted == (True, True, True)
    # `--roles` once they exist needs no CREATEROLE either; a worker logging in through the group role drains.
    again = sched_at(url, "migrate", "--roles")
    assert again.returncode == 0, again.stderr
    assert sched_at(url, "add", "sched.noop").returncode == 0
    worker_url = url.replace("app_owner@", "app_worker@")
    drained = sched_at(worker_url, "worker", "--burst", "--no-listen")
    assert drained.returncode == 0, drained.stderr
    assert existing_roles(admin_dsn) == {*ROLES}
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        assert c.execute("SELECT state::text FROM sched_jobs_all").fetchall() == [("succeeded",)]


def test_an_owner_of_the_schema_only_is_told_to_own_the_database(make_server, sched_at) -> None:
    server = make_server().launch()
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE ROLE schema_owner LOGIN")
        for role in ROLES:
            admin.execute(f"CREATE ROLE {role} NOLOGIN")
        admin.execute("CREATE DATABASE app")
    with psycopg.connect(server.dsn("app"), autocommit=True) as admin:
        admin.execute("ALTER SCHEMA public OWNER TO schema_owner")
    url = f"postgresql://schema_owner@127.0.0.1:{server.port}/app"
    failed = sched_at(url, "migrate")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        "Error: granting CONNECT and TEMPORARY on this database to the sched roles needs ownership of the"
        " database, which schema_owner lacks; ask an admin to make schema_owner its owner, or to run"
        " `sched migrate --roles` as its owner"
    )
    # The migrations themselves went in: the schema's owner can run sched, only the grants wait for an admin.
    assert sched_at(url, "migrate", "--check").returncode == 0
