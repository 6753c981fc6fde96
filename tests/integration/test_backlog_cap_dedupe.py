"""Adding a job whose dedupe key a live job holds returns that job (docs/protocol.md, "Keys"); the backlog cap
governs new jobs only ("Queue controls"). So an idempotent re-add of a job already queued must answer
"deduplicated" even when the queue is at its cap: producers re-send keyed jobs precisely when the queue is busy."""

from __future__ import annotations

import pytest

from pgsched import db, repository
from pgsched.errors import QueueFull
from pgsched.models import Enqueued, NewJob


def test_a_keyed_re_add_on_a_full_queue_returns_the_live_job(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 1)
    first = repository.enqueue(conn, NewJob(task="t", key="order-7"))
    assert repository.enqueue(conn, NewJob(task="t", key="order-7")) == Enqueued(first.id, deduplicated=True)


def test_a_bulk_re_add_of_queued_keys_on_a_full_queue_deduplicates(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 2)
    jobs = [NewJob(task="t", key="a"), NewJob(task="t", key="b")]
    first = repository.enqueue_many(conn, jobs)
    assert repository.enqueue_many(conn, jobs) == [Enqueued(e.id, deduplicated=True) for e in first]


def test_the_cap_still_counts_new_keys_beside_held_ones(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 2)
    repository.enqueue_many(conn, [NewJob(task="t", key="a")])
    # "a" is held (deduplicated, not counted), "b" is new: room for it. "c" too would pass the cap.
    added = repository.enqueue_many(conn, [NewJob(task="t", key="a"), NewJob(task="t", key="b")])
    assert [e.deduplicated for e in added] == [True, False]
    with pytest.raises(QueueFull, match="queue default is full"):
        repository.enqueue_many(conn, [NewJob(task="t", key="c")])
    with pytest.raises(QueueFull, match="queue default is full"):
        repository.enqueue(conn, NewJob(task="t", key="d"))
