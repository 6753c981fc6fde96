"""``Client.enqueue`` and ``Client.enqueue_many`` refuse a payload over SCHED_MAX_PAYLOAD_BYTES, as ``sched add``
does, on the client's own connection and on a caller's, and add nothing when they refuse."""

from __future__ import annotations

import psycopg
import pytest

from pgsched.client import Client
from pgsched.errors import InvalidInput

LIMIT = 64


def payload_of(size: int) -> dict[str, str]:
    """A payload whose compact JSON text is ``size`` bytes: {"x":"aaa..."} is 8 bytes around the letters."""
    return {"x": "a" * (size - 8)}


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM sched_jobs_all").fetchone()[0]  # type: ignore[index]


@pytest.fixture(autouse=True)
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_MAX_PAYLOAD_BYTES", str(LIMIT))


def test_enqueue_refuses_a_payload_over_the_limit(dsn: str) -> None:
    with Client(dsn) as client:
        assert not client.enqueue("t", payload_of(LIMIT)).deduplicated
        with pytest.raises(InvalidInput) as info:
            client.enqueue("t", payload_of(LIMIT + 1))
    assert info.value.message == f"payload is {LIMIT + 1} bytes, over the limit of {LIMIT} (SCHED_MAX_PAYLOAD_BYTES)"
    assert count(dsn) == 1


def test_enqueue_many_refuses_the_whole_batch_naming_the_job_over_the_limit(dsn: str) -> None:
    jobs = [{"task": "t", "payload": payload_of(LIMIT)}, {"task": "t", "payload": payload_of(LIMIT + 40)}]
    with Client(dsn) as client:
        with pytest.raises(InvalidInput) as info:
            client.enqueue_many(jobs)
        assert info.value.message == (
            f"job 2: payload is {LIMIT + 40} bytes, over the limit of {LIMIT} (SCHED_MAX_PAYLOAD_BYTES)"
        )
        assert count(dsn) == 0
        assert len(client.enqueue_many(jobs[:1] * 3)) == 3
    assert count(dsn) == 3


def test_a_client_on_the_callers_connection_applies_the_same_limit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as app:
        client = Client(conn=app)
        with pytest.raises(InvalidInput, match="over the limit of 64"):
            client.enqueue("t", payload_of(LIMIT + 1))
        with pytest.raises(InvalidInput, match="job 1: payload is 65 bytes"):
            client.enqueue_many([{"task": "t", "payload": payload_of(LIMIT + 1)}])
    assert count(dsn) == 0
