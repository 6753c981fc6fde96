"""Queue controls against a real PostgreSQL: pause and the token bucket enforced inside the claim (with
concurrent claimers), the no-row fast path, and admission control under concurrent adds."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.errors import QueueFull
from pgsched.models import NewJob
from pgsched.sqlfiles import query


def claim(dsn: str, limit: int = 100, queue: str = "default") -> list:
    async def main(conn: db.AsyncConnection) -> list:
        return await repository.claim_jobs(conn, str(uuid.uuid4()), queue, ["t"], limit)

    return run_async(dsn, main)


def fill(conn: db.Connection, count: int, queue: str = "default") -> None:
    repository.enqueue_many(conn, [NewJob(task="t", queue=queue) for _ in range(count)])


def test_a_paused_queue_yields_nothing_until_resumed(dsn: str, conn: db.Connection) -> None:
    fill(conn, 5)
    fill(conn, 5, queue="other")
    repository.set_queue_paused(conn, "default", True)
    assert claim(dsn) == []
    assert len(claim(dsn, queue="other")) == 5
    repository.set_queue_paused(conn, "default", False)
    assert len(claim(dsn)) == 5


def test_resuming_and_clearing_remove_the_row_so_claims_take_the_no_row_path(conn: db.Connection) -> None:
    repository.set_queue_paused(conn, "default", True)
    repository.set_queue_rate(conn, "default", 5.0)
    repository.set_queue_paused(conn, "default", False)
    assert conn.rows("SELECT queue FROM sched_queues") == [("default",)]
    repository.set_queue_rate(conn, "default", None)
    assert conn.rows("SELECT queue FROM sched_queues") == []


def test_the_bucket_starts_full_and_is_charged_only_for_jobs_taken(dsn: str, conn: db.Connection) -> None:
    fill(conn, 3)
    repository.set_queue_rate(conn, "default", 1 / 3600, burst=10)
    assert len(claim(dsn)) == 3  # only three jobs exist: seven tokens must remain
    fill(conn, 20)
    assert len(claim(dsn)) == 7
    assert claim(dsn) == []


def test_two_concurrent_claimers_together_stay_within_the_rate(dsn: str, conn: db.Connection) -> None:
    fill(conn, 2000)
    rate, burst = 40.0, 5
    repository.set_queue_rate(conn, "default", rate, burst=burst)
    claimed: list[int] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + 1.5

    def claimer() -> None:
        async def main(c: db.AsyncConnection) -> None:
            worker = str(uuid.uuid4())
            while time.monotonic() < deadline:
                jobs = await repository.claim_jobs(c, worker, "default", ["t"], 50)
                with lock:
                    claimed.extend(j.id for j in jobs)

        run_async(dsn, main)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(claimed) == len(set(claimed))
    assert len(claimed) <= burst + rate * elapsed + 1
    assert len(claimed) >= rate * 1.5 * 0.6  # the limit throttles; it does not starve


def test_the_claim_of_an_unconfigured_queue_reads_the_ready_index_and_locks_no_queue_row(
    dsn: str, conn: db.Connection
) -> None:
    fill(conn, 500)
    repository.set_queue_rate(conn, "elsewhere", 10.0)
    conn.run("ANALYZE sched_jobs")
    params = repository.claim_params("default", ["t"], 10, str(uuid.uuid4()))
    with psycopg.connect(dsn) as raw:
        plan = "\n".join(r[0] for r in raw.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query("JobClaim"), params))
        # While this claim's transaction is open, another session can still lock every sched_queues row.
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '1s'")
            other.execute("SELECT * FROM sched_queues FOR UPDATE NOWAIT")
        raw.rollback()
    assert "Index Scan using sched_jobs_ready on sched_jobs" in plan
    assert "Index Scan using sched_jobs_deferred on sched_jobs" in plan
    # The ready index is read in claim order (no sort of the ready set); the only sorts merge the two candidate
    # lists and order the due window by priority.
    sorts = [line.split("Sort Key: ")[1] for line in plan.splitlines() if "Sort Key" in line]
    assert len(sorts) == 2, sorts
    assert "ready.priority DESC, ready.run_at, ready.id" in sorts
    assert not any(key.startswith("sched_jobs.") for key in sorts), sorts


def test_adding_to_a_full_queue_is_refused_with_the_count(conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 3)
    fill(conn, 3)
    with pytest.raises(QueueFull, match=r"^queue default is full \(3 jobs\)$"):
        repository.enqueue(conn, NewJob(task="t"))
    with pytest.raises(QueueFull):
        fill(conn, 1)
    repository.enqueue(conn, NewJob(task="t", queue="other"))


def test_concurrent_adds_never_pass_the_backlog_cap(dsn: str, conn: db.Connection) -> None:
    repository.set_queue_max_backlog(conn, "default", 25)
    refused: list[int] = []

    def producer() -> None:
        with db.connect(dsn) as c:
            for _ in range(10):
                try:
                    repository.enqueue(c, NewJob(task="t"))
                except QueueFull:
                    refused.append(1)

    threads = [threading.Thread(target=producer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.row("SELECT count(*) FROM sched_jobs_all WHERE state = 'queued'") == (25,)
    assert len(refused) == 60 - 25


def test_list_queues_shows_settings_and_load(conn: db.Connection) -> None:
    fill(conn, 2, queue="busy")
    repository.set_queue_paused(conn, "slow", True)
    repository.set_queue_rate(conn, "slow", 2.0, burst=4)
    repository.set_queue_max_backlog(conn, "slow", 100)
    queues = {q["queue"]: q for q in repository.list_queues(conn)}
    assert queues["busy"]["queued"] == 2 and queues["busy"]["rate"] is None and not queues["busy"]["paused"]
    slow = queues["slow"]
    assert (slow["paused"], slow["rate"], slow["burst"], slow["max_backlog"]) == (True, 2.0, 4.0, 100)
    assert slow["tokens"] == pytest.approx(4.0)
