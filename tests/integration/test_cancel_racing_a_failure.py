"""A cancel request that commits while a worker's failure is being recorded (the failure statement waits for the
cancel's row lock): the job must end cancelled for good, like any cancelled job, with finished_at set, its worker
kept and its dependents cancelled (docs/protocol.md, "Cancel", invariant 1), not half-retried."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
from support.connections import run_async

from pgsched import repository
from pgsched.errors import SchedError
from pgsched.models import NewJob, Outcome, OutcomeKind


def test_a_cancel_committed_while_a_failure_waits_for_the_row_ends_the_job_cancelled(dsn: str, conn) -> None:
    worker = str(uuid.uuid4())
    run_async(
        dsn,
        lambda c: repository.register_worker(
            c, worker, "host", 1, ["default"], ["t"], 1, stale_after_s=30, timeout_grace_s=10
        ),
    )
    parent = repository.enqueue(conn, NewJob(task="t", max_attempts=3)).id
    child = repository.enqueue(conn, NewJob(task="t", after=[parent])).id
    (claimed,) = run_async(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], 1))
    assert claimed.id == parent

    canceller = psycopg.connect(dsn)  # a cancel in flight: its row lock is held until it commits
    canceller.execute("UPDATE sched_jobs SET cancel_requested_at = now() WHERE id = %s", [parent])
    failure = Outcome(parent, claimed.lease, OutcomeKind.FAILED, error="boom")
    recorded: list = []

    def write() -> None:
        try:
            recorded.append(run_async(dsn, lambda c: repository.record_outcomes(c, worker, [failure])))
        except SchedError as exc:  # on the older statement: the table refuses a cancelled job without finished_at
            recorded.append(exc.message)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)  # the failure statement now waits for the cancel's row lock
    canceller.commit()
    canceller.close()
    writer.join(30)
    assert [getattr(r, "written", r) for r in recorded] == [[parent]]

    row = conn.row(
        "SELECT state::text, finished_at IS NOT NULL, worker_id::text, deferred FROM sched_jobs_all WHERE id = %s",
        [parent],
    )
    assert row == ("cancelled", True, worker, False)
    assert conn.row("SELECT state::text FROM sched_jobs_all WHERE id = %s", [child]) == ("cancelled",)
