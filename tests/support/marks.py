"""A worker's reading positions as while vacuum is held back (docs/protocol.md, "Where a claim starts reading"),
a worker's drain of a queue through them, and what a statement's scans of one index cost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from pgsched import db, repository
from pgsched.models import Outcome, OutcomeKind
from support.connections import run_async


class NeverFull(repository.ReadyMarks):
    """Positions as while vacuum is held back (reading from the beginning never cheap), whose periodic full pass
    never comes on its own (a test decides with rewind() or the probe)."""

    FULL_PASS_EVERY_S = 3600.0
    CHEAP_PROBE_S = 0.0


def drain(
    dsn: str, worker: str, marks: repository.ReadyMarks, batch: int, queue: str = "default", tasks: tuple = ("t",)
) -> int:
    """Claim (through ``marks``) and finish every ready job of ``queue``, as a worker does; returns how many."""

    async def body(conn: db.AsyncConnection) -> int:
        done = 0
        while jobs := await repository.claim_jobs(conn, worker, queue, list(tasks), batch, marks):
            await repository.record_outcomes(
                conn, worker, [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs]
            )
            done += len(jobs)
        return done

    return run_async(dsn, body)


def _plan(dsn: str, sql: str, params: dict) -> dict:
    """The top node of ``sql``'s plan as run with ``params`` under EXPLAIN ANALYZE, rolled back."""
    with psycopg.connect(dsn) as conn:
        ((plan,),) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchall()
        conn.rollback()
    return plan[0]["Plan"]


def _buffers(node: dict) -> int:
    return node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)


def statement_buffers(dsn: str, sql: str, params: dict) -> int:
    """Shared buffers (hit + read) that ``sql`` touches with ``params``, rolled back: the top node counts what the
    whole statement read, inside the functions it calls too. Buffers do not depend on how busy the machine is."""
    return _buffers(_plan(dsn, sql, params))


def index_buffers(dsn: str, sql: str, params: dict, index: str) -> int:
    """Shared buffers (hit + read) that the scans of ``index`` touch when ``sql`` runs with ``params``, rolled
    back. A node's figures include those of the nodes below it (a subquery in a scan's condition)."""

    def walk(node: dict) -> int:
        if node.get("Index Name") == index:
            return _buffers(node)
        return sum(walk(child) for child in node.get("Plans", []))

    return walk(_plan(dsn, sql, params))


@contextmanager
def held_snapshot(dsn: str) -> Iterator[None]:
    """A snapshot that holds vacuum back while the block runs: no row version after it can be removed."""
    with psycopg.connect(dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM sched_jobs")
        yield
        holder.rollback()


def worker_row(conn: db.Connection) -> str:
    """A worker's row serving queue "q" (task "t"), as a registered worker has before it claims; returns its id."""
    worker = str(uuid.uuid4())
    conn.run(
        "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency) VALUES (%s, 'h', 1, '{q}', '{t}', 1)",
        (worker,),
    )
    return worker


def settle_limits(conn: db.Connection) -> None:
    """As if queue "q"'s limits had been set more than 60 s ago: the count's floor may move (docs/protocol.md,
    "Where the count starts reading")."""
    conn.run("UPDATE sched_queues SET updated_at = now() - interval '1 hour' WHERE queue = 'q'")
