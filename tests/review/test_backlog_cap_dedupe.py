"""Adding a job whose dedupe key a live job holds returns that job (docs/protocol.md, "Keys"); the backlog cap
governs new jobs only ("Queue controls"). So an idempotent re-add of a job already queued must answer
"deduplicated" even when the queue is at its cap: producers re-send keyed jobs precisely when the queue is busy."""

from __future__ import annotations

import pytest

from pgsched import db, repository
from pgsched.models import Enqueued, NewJob

REASON = (
    "the cap is checked before the key: _admit (pgsched/repository/queues.py) refuses the add as QueueFull before "
    "the insert can find the live key holder; fix: in the capped path of producers.enqueue, after QueueAdmitLock "
    "and before counting, look up JobGetLiveByKey for a keyed job and return it deduplicated; in enqueue_many, "
    "admit only the jobs whose keys no live job (and no earlier line) holds"
)


@pytest.mark.xfail(strict=True, reason=REASON)
def test_a_keyed_re_add_on_a_full_queue_returns_the_live_job(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 1)
    first = repository.enqueue(conn, NewJob(task="t", key="order-7"))
    assert repository.enqueue(conn, NewJob(task="t", key="order-7")) == Enqueued(first.id, deduplicated=True)


@pytest.mark.xfail(strict=True, reason=REASON)
def test_a_bulk_re_add_of_queued_keys_on_a_full_queue_deduplicates(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 2)
    jobs = [NewJob(task="t", key="a"), NewJob(task="t", key="b")]
    first = repository.enqueue_many(conn, jobs)
    assert repository.enqueue_many(conn, jobs) == [Enqueued(e.id, deduplicated=True) for e in first]
