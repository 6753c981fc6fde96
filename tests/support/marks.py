"""A worker's reading positions as while vacuum is held back (docs/protocol.md, "Where a claim starts reading"),
and a worker's drain of a queue through them."""

from __future__ import annotations

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
