"""Behind PgBouncer in transaction mode: sched recognises the pooler by itself (or is told with SCHED_POOL_MODE),
prepares no server-side statement there, and leaves no session setting on a server connection that the pool
hands to other clients; directly connected, nothing changes."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from pgbouncer import PgBouncer

from pgsched import db, repository
from pgsched.client import Client
from pgsched.errors import InvalidInput
from pgsched.models import NewJob


def test_pgbouncer_is_recognised_and_a_direct_connection_is_not(dsn: str, pooled_dsn: str) -> None:
    with db.connect(pooled_dsn) as pooled, db.connect(dsn) as direct:
        assert pooled.pooled and pooled.raw.prepare_threshold is None
        assert not direct.pooled and direct.raw.prepare_threshold == 5

    async def both() -> tuple[bool, bool]:
        a = await db.connect_async(pooled_dsn)
        b = await db.connect_async(dsn)
        try:
            return a.pooled, b.pooled
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(both()) == (True, False)


def test_sched_pool_mode_forces_either_way(dsn: str, pooled_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_POOL_MODE", "transaction")
    with db.connect(dsn) as conn:
        assert conn.pooled
    monkeypatch.setenv("SCHED_POOL_MODE", "session")
    with db.connect(pooled_dsn) as conn:
        assert not conn.pooled
    monkeypatch.setenv("SCHED_POOL_MODE", "sometimes")
    with pytest.raises(InvalidInput, match="SCHED_POOL_MODE"):
        db.connect(dsn)


def test_many_workers_claim_through_a_small_pool_without_meeting_each_others_statements(
    conn: db.Connection, pooled_dsn: str
) -> None:
    """Eight clients share 4 server connections and each claims far more than five times (psycopg's threshold
    for preparing a statement by itself; the claim asks for it outright): every job is claimed exactly once and
    no claim fails. Before, claims met other clients' prepared statements and failed with "invalid input syntax
    for type interval: <worker id>"."""
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(400)])

    async def claimer(worker_id: str) -> list[int]:
        c = await db.connect_async(pooled_dsn)
        got: list[int] = []
        try:
            await repository.register_worker(
                c, worker_id, "host", 1, ["default"], ["t"], 1, stale_after_s=30.0, timeout_grace_s=10.0
            )
            for _ in range(200):
                jobs = await repository.claim_jobs(c, worker_id, "default", ["t"], 1)
                if not jobs:
                    break
                got.extend(j.id for j in jobs)
        finally:
            await c.close()
        return got

    async def all_claimers() -> list[list[int]]:
        return await asyncio.gather(*(claimer(str(uuid.uuid4())) for _ in range(8)))

    claimed = [job for got in asyncio.run(all_claimers()) for job in got]
    assert len(claimed) == 400 and len(set(claimed)) == 400


def _synchronous_commit(url: str) -> str:
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as c:
        return c.execute("SHOW synchronous_commit").fetchone()[0]


@pytest.fixture
def one_connection_pool(server_dsn: str, dsn: str):
    """A PgBouncer with a single server connection, so every client shares the same server session."""
    bouncer = PgBouncer(server_dsn, pool_size=1).start()
    yield bouncer.url(dsn)
    bouncer.stop()


def test_worker_commit_level_holds_for_its_own_transactions_only(one_connection_pool: str) -> None:
    """Behind the pooler a worker's SCHED_WORKER_COMMIT is set in each of its transactions, never on the
    session: its own statements commit with it, another client's on the same server connection do not."""

    async def worker_side() -> list[str]:
        c = await db.connect_async(one_connection_pool)
        try:
            assert c.pooled
            c.commit_level_each_transaction("off")
            seen = [(await c.row("SHOW synchronous_commit"))[0]]
            async with c.transaction():
                seen.append((await c.row("SHOW synchronous_commit"))[0])
            return seen
        finally:
            await c.close()

    assert asyncio.run(worker_side()) == ["off", "off"]
    assert _synchronous_commit(one_connection_pool) == "on"


def test_a_client_that_is_not_durable_leaves_no_setting_behind(one_connection_pool: str) -> None:
    """Its own transactions commit without the flush wait; the next client on the same server connection
    finds the server's setting."""
    with Client(one_connection_pool, durable=False) as client:
        client.enqueue("t")
        client.enqueue_many([{"task": "t"}, {"task": "t"}])
        assert client._conn.commit_level == "off"
        with client._conn.transaction() as conn:
            assert conn.row("SHOW synchronous_commit") == ("off",)
    assert _synchronous_commit(one_connection_pool) == "on"


def test_migrate_through_the_pooler(empty_dsn: str, pgbouncer: PgBouncer, server_dsn: str) -> None:
    """The migrate lock and the migrations share one transaction there (a session lock would stay behind on a
    server connection); a second run finds nothing to do."""
    from pgsched import admin, migrate

    url = pgbouncer.url(empty_dsn)
    with db.connect(url) as conn:
        assert len(admin.apply_migrations(conn).applied) == len(migrate.available())
        assert admin.apply_migrations(conn).applied == []
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        locks = c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
    assert locks == 0
