"""A rate-limited queue's bucket holds at most ``burst`` tokens however long it sat idle: one claim after a long
quiet spell takes at most ``burst`` jobs, whatever limit it asks for, and the next one finds the bucket empty."""

from __future__ import annotations

import uuid

import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.models import NewJob


def claim(dsn: str, limit: int) -> int:
    async def main(conn: db.AsyncConnection) -> int:
        return len(await repository.claim_jobs(conn, str(uuid.uuid4()), "default", ["t"], limit))

    return run_async(dsn, main)


@pytest.mark.parametrize(("rate", "burst", "claimable"), [(2.0, 5.0, 5), (1000.0, 3.0, 3), (0.5, 2.5, 2)])
def test_an_idle_bucket_lets_one_claim_take_at_most_burst_jobs(
    dsn: str, conn: db.Connection, rate: float, burst: float, claimable: int
) -> None:
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(200)])
    repository.set_queue_rate(conn, "default", rate, burst=burst)
    # An hour without claims: at this rate the bucket would have refilled far beyond its burst.
    conn.run("UPDATE sched_queues SET refilled_at = refilled_at - interval '1 hour' WHERE queue = 'default'")
    assert claim(dsn, 100) == claimable
    # The claim charged the bucket for the jobs it took: it is (nearly) empty now.
    (tokens,) = conn.row("SELECT tokens FROM sched_queues WHERE queue = 'default'")  # type: ignore[misc]
    assert 0 <= tokens < 1
    if rate < 10:
        assert claim(dsn, 100) == 0
