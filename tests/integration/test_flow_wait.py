"""QueueFlowWait against a real PostgreSQL (docs/protocol.md, "When a held-back worker looks again"): what a worker
whose claim found nothing waits for. Only buckets that had no whole token when the claim started count; a token
that came while the claim ran gives a wait at or below zero (look again at once), and a bucket that already had
tokens gives none (the claim found no job: nothing to wait for but the poll)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pgsched import db, repository
from pgsched.repository import FlowWait


def wait(dsn: str, queues: list[str], since: float = 0.0) -> FlowWait:
    async def ask() -> FlowWait:
        conn = await db.connect_async(dsn)
        try:
            return await repository.flow_wait(conn, queues, since)
        finally:
            await conn.close()

    return asyncio.run(ask())


def test_queues_without_flow_control_wait_for_nothing(dsn: str, conn: db.Connection) -> None:
    assert wait(dsn, ["q", "unknown"]) == FlowWait(controlled=False, capped=False, token_in=None)
    repository.set_queue_paused(conn, "q", True)
    assert wait(dsn, ["q"]) == FlowWait(controlled=False, capped=False, token_in=None)


def test_a_queue_that_caps_its_running_jobs_waits_for_ended_runs(dsn: str, conn: db.Connection) -> None:
    repository.set_queue_concurrency(conn, "q", max_running=3, set_group_concurrency=False)
    assert wait(dsn, ["q", "other"]) == FlowWait(controlled=True, capped=True, token_in=None)
    repository.set_queue_concurrency(conn, "q", group_concurrency=2, max_running=None)
    assert wait(dsn, ["q"]).capped
    # A paused queue claims nothing, whatever ends.
    repository.set_queue_paused(conn, "q", True)
    assert wait(dsn, ["q"]) == FlowWait(controlled=True, capped=False, token_in=None)


def test_an_empty_queue_bucket_waits_for_its_next_token(dsn: str, conn: db.Connection) -> None:
    repository.set_queue_rate(conn, "q", 2.0, 1)
    # A full bucket: the claim had a token and found no job.
    assert wait(dsn, ["q"]).token_in is None
    conn.run("UPDATE sched_queues SET tokens = 0.25, refilled_at = clock_timestamp() WHERE queue = 'q'")
    token_in = wait(dsn, ["q"]).token_in
    assert token_in is not None and 0.3 < token_in <= 0.375
    # The token came while the claim ran (it started 0.5 s before the bucket had one): look again at once.
    conn.run("UPDATE sched_queues SET tokens = 0, refilled_at = clock_timestamp() - interval '0.6 s' WHERE queue = 'q'")
    late = wait(dsn, ["q"], since=1.0).token_in
    assert late is not None and -0.2 <= late <= 0
    # The same bucket, asked about a claim that started after the token came: nothing to wait for.
    assert wait(dsn, ["q"], since=0.0).token_in is None
    # A claim refills the bucket even when it takes nothing: left with a whole token, the rate was not what held
    # that claim back, however long ago it started.
    conn.run("UPDATE sched_queues SET tokens = 1, refilled_at = clock_timestamp() WHERE queue = 'q'")
    assert wait(dsn, ["q"], since=1.0).token_in is None
    repository.set_queue_paused(conn, "q", True)
    assert wait(dsn, ["q"], since=1.0).token_in is None


@pytest.mark.parametrize("burst", [1, 3])
def test_group_buckets_wait_for_the_first_group_out_of_tokens(dsn: str, conn: db.Connection, burst: int) -> None:
    repository.set_queue_group_rate(conn, "q", 10.0, burst)
    # A group t seconds from full holds burst - 10 t tokens: with bursts of 3, "far" (1 s) is out of tokens and has
    # its next 0.2 s before it is full, while "near" (0.05 s) has 2.5; with bursts of 1 both are out, and near's
    # token comes first, when it is full. Groups of other queues do not count.
    conn.run(
        "INSERT INTO sched_group_buckets (queue, group_name, full_at) VALUES "
        "('q', 'far', clock_timestamp() + interval '1 s'), ('q', 'near', clock_timestamp() + interval '0.05 s'), "
        "('other', 'x', clock_timestamp() + interval '0.01 s')"
    )
    token_in = wait(dsn, ["q"]).token_in
    expected = 0.05 if burst == 1 else 0.8
    assert token_in is not None and expected - 0.04 < token_in <= expected, token_in
    # A claim that started 1 s ago, before near had the token it holds now: that token counts, and it has come.
    time.sleep(0.06)
    late = wait(dsn, ["q"], since=1.0).token_in
    assert late is not None and late <= 0, late
