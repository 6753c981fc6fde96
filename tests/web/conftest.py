"""Fixtures of the web dashboard's tests: a database holding jobs in every state, and a client of the app."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from pgsched import db

pytest.importorskip("starlette", reason="the web extra is not installed: pip install 'pgsched[web]'")

from starlette.testclient import TestClient

from pgsched.web.app import create_app


def seed(conn: db.Connection) -> dict[str, int]:
    """One job in each state on queue "web" (and one failure on "other"); returns their ids by state."""
    ids: dict[str, int] = {}

    def insert(state: str, sql: str) -> None:
        ids[state] = conn.row(sql)[0]  # type: ignore[index]

    insert(
        "queued",
        "INSERT INTO sched_jobs (queue, task, payload, dedupe_key) VALUES ('web', 'mail.send', "
        "'{\"to\": \"ada@example.com\"}', 'order-1') RETURNING id",
    )
    insert(
        "scheduled",
        "INSERT INTO sched_jobs (queue, task, run_at, deferred) "
        "VALUES ('web', 'mail.send', now() + interval '1 hour', true) RETURNING id",
    )
    insert(
        "running",
        "INSERT INTO sched_jobs (queue, task, state, started_at, worker_id, lease, progress) "
        "VALUES ('web', 'report.build', 'running', now(), gen_random_uuid(), 1, '{\"done\": 3}') RETURNING id",
    )
    insert(
        "failed",
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, error) "
        "VALUES ('web', 'report.build', 'failed', 3, now(), now(), "
        "E'ValueError: no such report\\nTraceback ...') RETURNING id",
    )
    insert(
        "succeeded",
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, result) "
        "VALUES ('web', 'mail.send', 'succeeded', 1, now(), now(), '{\"sent\": true}') RETURNING id",
    )
    insert(
        "waiting",
        "INSERT INTO sched_jobs (queue, task, state, pending_deps) "
        "VALUES ('web', 'mail.send', 'waiting', 1) RETURNING id",
    )
    conn.run("INSERT INTO sched_job_deps (job_id, depends_on) VALUES (%s, %s)", (ids["waiting"], ids["queued"]))
    conn.run("UPDATE sched_jobs SET has_dependents = true WHERE id = %s", (ids["queued"],))
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, error) "
        "VALUES ('other', 'report.build', 'failed', 1, now(), now(), 'ValueError: no such report')"
    )
    return ids


@pytest.fixture
def seeded(conn: db.Connection) -> dict[str, int]:
    """The test's database with one job in each state on queue "web"."""
    return seed(conn)


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    """A browser-like client of the dashboard on the test's database."""
    app = create_app(dsn)
    with TestClient(app) as test_client:
        yield test_client
    app.state.database.close()


def csrf_of(html: str) -> str:
    """The session token a confirmation page's form carries."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form token"
    return match.group(1)


def cost_of(html: str) -> int:
    """How many queries the page says it ran."""
    match = re.search(r"db: (\d+) quer", html)
    assert match, "the page does not say what it cost"
    return int(match.group(1))
