"""The claim/outcome/reap/cleanup protocol against a real PostgreSQL, with real concurrent connections."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from support.connections import run_async

from pgsched import db, repository
from pgsched.models import NewJob, Outcome
from pgsched.sqlfiles import query


def add(conn: db.Connection, task: str = "t", **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task=task, **fields)).id  # type: ignore[arg-type]


def claim(dsn: str, worker: str, limit: int = 10, queue: str = "default", tasks: tuple[str, ...] = ("t",)) -> list:
    return run_async(dsn, lambda c: repository.claim_jobs(c, worker, queue, list(tasks), limit))


def record(dsn: str, worker: str, outcomes: list[Outcome]) -> repository.RecordResult:
    return run_async(dsn, lambda c: repository.record_outcomes(c, worker, outcomes))


def job(conn: db.Connection, job_id: int) -> dict:
    return repository.get_job(conn, job_id)


def new_worker() -> str:
    return str(uuid.uuid4())


# --- claiming --------------------------------------------------------------------------------------------


def test_two_connections_never_claim_the_same_job(dsn: str, conn: db.Connection) -> None:
    repository.enqueue_many(conn, [NewJob(task="t", payload_json=f'{{"n": {n}}}') for n in range(1000)])
    workers = [new_worker(), new_worker()]
    claimed: dict[str, list[int]] = {w: [] for w in workers}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(workers))

    def drain(worker: str) -> None:
        async def body(c: db.AsyncConnection) -> None:
            barrier.wait(timeout=30)
            while batch := await repository.claim_jobs(c, worker, "default", ["t"], 7):
                claimed[worker].extend(j.id for j in batch)

        try:
            run_async(dsn, body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    first, second = (claimed[w] for w in workers)
    assert not set(first) & set(second)
    assert len(first) + len(second) == 1000
    assert len(set(first) | set(second)) == 1000
    assert first and second, "one connection got nothing: the claims did not overlap"
    rows = conn.rows("SELECT worker_id::text, state::text, attempt, count(*) FROM sched_jobs_all GROUP BY 1, 2, 3")
    assert sorted(rows) == sorted((w, "running", 1, len(claimed[w])) for w in workers)


def test_claim_order_limit_and_filters(dsn: str, conn: db.Connection) -> None:
    low = add(conn, priority=-5)
    high = add(conn, priority=10)
    normal = add(conn)
    add(conn, delay_s=3600.0)  # scheduled: not ready
    add(conn, task="other")  # a task the worker does not know
    add(conn, queue="elsewhere")
    worker = new_worker()
    first = claim(dsn, worker, limit=2)
    assert [j.id for j in first] == [high, normal]
    assert [(j.attempt, j.max_attempts, j.timeout_s, j.payload) for j in first] == [(1, 3, 300.0, {})] * 2
    assert [j.id for j in claim(dsn, worker, limit=10)] == [low]
    assert claim(dsn, worker, limit=10) == []
    assert job(conn, high)["state"] == "running"
    assert job(conn, high)["worker_id"] == uuid.UUID(worker)


# --- fencing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["succeeded", "failed", "cancelled", "released"])
def test_outcomes_from_a_fenced_off_attempt_change_nothing(dsn: str, conn: db.Connection, kind: str) -> None:
    job_id = add(conn, max_attempts=5)
    worker = new_worker()
    (claimed,) = claim(dsn, worker)
    before = job(conn, job_id)
    stranger = new_worker()
    wrong_worker = record(dsn, stranger, [Outcome(job_id, claimed.lease, kind, error="late")])
    older_lease = record(dsn, worker, [Outcome(job_id, claimed.lease - 1, kind, error="late")])
    newer_lease = record(dsn, worker, [Outcome(job_id, claimed.lease + 1, kind, error="late")])
    for result in (wrong_worker, older_lease, newer_lease):
        assert (result.written, result.fenced) == ([], [job_id])
    assert job(conn, job_id) == before
    ok = record(dsn, worker, [Outcome(job_id, claimed.lease, kind, error="boom")])
    assert (ok.written, ok.fenced) == ([job_id], [])
    after_state = {"succeeded": "succeeded", "failed": "queued", "cancelled": "cancelled", "released": "queued"}
    assert job(conn, job_id)["state"] == after_state[kind]


def test_late_outcome_after_reap_cannot_overwrite_the_new_attempt(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn)
    old, new = new_worker(), new_worker()
    claim(dsn, old)
    reaped = run_async(dsn, lambda c: repository.reap_stale(c))
    assert reaped.requeued == [job_id]
    (second,) = claim(dsn, new)
    assert second.attempt == 2
    late = record(dsn, old, [Outcome(job_id, 1, "succeeded", result='{"stale": true}')])
    assert late.fenced == [job_id]
    current = job(conn, job_id)
    assert (current["state"], current["attempt"], current["result"]) == ("running", 2, None)
    assert current["worker_id"] == uuid.UUID(new)


def test_success_stores_the_result(dsn: str, conn: db.Connection) -> None:
    a, b = add(conn), add(conn)
    worker = new_worker()
    claimed = claim(dsn, worker)
    outcomes = [Outcome(j.id, j.lease, "succeeded", result=f'{{"n": {j.id}}}' if j.id == a else None) for j in claimed]
    assert sorted(record(dsn, worker, outcomes).written) == [a, b]
    assert (job(conn, a)["state"], job(conn, a)["result"]) == ("succeeded", {"n": a})
    assert (job(conn, b)["state"], job(conn, b)["result"]) == ("succeeded", None)
    assert job(conn, a)["finished_at"] is not None


def test_release_gives_the_attempt_back(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn)
    worker = new_worker()
    (claimed,) = claim(dsn, worker)
    result = record(dsn, worker, [Outcome(job_id, claimed.lease, "released")])
    assert result.written == [job_id] and result.wake_queues == {"default"}
    current = job(conn, job_id)
    assert (current["state"], current["attempt"], current["worker_id"]) == ("queued", 0, None)


# --- retries and backoff ---------------------------------------------------------------------------------


def _fail_at_attempt(dsn: str, conn: db.Connection, attempt: int, base: float, cap: float, count: int = 1) -> list:
    """Fail ``count`` fresh jobs at ``attempt``; return their delays' (low, high) bounds in seconds."""
    ids = [add(conn, max_attempts=1000) for _ in range(count)]
    conn.run("UPDATE sched_jobs SET attempt = %s WHERE id = ANY(%s)", (attempt - 1, ids))
    worker = new_worker()
    claimed = claim(dsn, worker, limit=count)
    assert {j.attempt for j in claimed} == {attempt}
    (before,) = conn.row("SELECT clock_timestamp()")
    outcomes = [Outcome(j.id, j.lease, "failed", error="boom", backoff_base_s=base, backoff_cap_s=cap) for j in claimed]
    assert sorted(record(dsn, worker, outcomes).written) == sorted(ids)
    (after,) = conn.row("SELECT clock_timestamp()")
    rows = conn.rows("SELECT run_at, state::text, worker_id, error FROM sched_jobs_all WHERE id = ANY(%s)", (ids,))
    delays = []
    for run_at, state, worker_id, error in rows:
        assert (state, worker_id, error) == ("queued", None, "boom")
        # The server's now() lies between before and after, so run_at - now() is bracketed by these two.
        delays.append(((run_at - after).total_seconds(), (run_at - before).total_seconds()))
    return delays


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [(1, 2.0, 3600.0), (2, 2.0, 3600.0), (4, 3.0, 3600.0), (10, 2.0, 60.0), (30, 2.0, 3600.0), (3, 100.0, 150.0)],
)
def test_backoff_bounds_and_cap(dsn: str, conn: db.Connection, attempt: int, base: float, cap: float) -> None:
    expected = min(cap, base * 2 ** (attempt - 1))
    for low, high in _fail_at_attempt(dsn, conn, attempt, base, cap, count=20):
        assert high >= 0.5 * expected
        assert low <= expected


def test_backoff_is_jittered(dsn: str, conn: db.Connection) -> None:
    delays = [high for _low, high in _fail_at_attempt(dsn, conn, 5, 10.0, 3600.0, count=40)]
    # 160 s nominal: 40 draws from [80, 160] s cannot all land within 2 s of each other by chance.
    assert max(delays) - min(delays) > 2.0
    assert min(delays) < 0.9 * 160 and max(delays) > 0.6 * 160


def test_final_or_non_retryable_failure_fails_the_job(dsn: str, conn: db.Connection) -> None:
    last = add(conn, max_attempts=1)
    fatal = add(conn, max_attempts=5)
    worker = new_worker()
    claimed = {j.id: j for j in claim(dsn, worker)}
    record(
        dsn,
        worker,
        [
            Outcome(last, claimed[last].lease, "failed", error="gave up"),
            Outcome(fatal, claimed[fatal].lease, "failed", error="bad input", retryable=False),
        ],
    )
    for job_id, error in ((last, "gave up"), (fatal, "bad input")):
        current = job(conn, job_id)
        assert (current["state"], current["error"]) == ("failed", error)
        assert current["finished_at"] is not None


# --- reaping ---------------------------------------------------------------------------------------------


def _register(dsn: str, worker: str, heartbeat_age_s: float, conn: db.Connection) -> None:
    run_async(
        dsn,
        lambda c: repository.register_worker(
            c, worker, "host", 1, ["default"], ["t"], 4, stale_after_s=30, timeout_grace_s=10
        ),
    )
    conn.run(
        "UPDATE sched_workers SET heartbeat_at = now() - %s WHERE id = %s", (timedelta(seconds=heartbeat_age_s), worker)
    )


def test_reaping_a_dead_workers_jobs_counts_the_attempt(dsn: str, conn: db.Connection) -> None:
    dead, alive, ghost = new_worker(), new_worker(), new_worker()
    _register(dsn, dead, 120, conn)
    _register(dsn, alive, 0, conn)
    retry = add(conn, max_attempts=3)
    exhausted = add(conn, max_attempts=2)
    conn.run("UPDATE sched_jobs SET attempt = 1 WHERE id = %s", (exhausted,))
    claim(dsn, dead)
    kept = add(conn)
    claim(dsn, alive)
    orphan = add(conn)
    claim(dsn, ghost)  # a worker that never registered

    result = run_async(dsn, lambda c: repository.reap_stale(c))
    assert result.ran
    assert sorted(result.requeued) == sorted([retry, orphan])
    assert result.failed == [exhausted]
    assert result.workers_removed == 1

    requeued = job(conn, retry)
    assert (requeued["state"], requeued["attempt"], requeued["worker_id"]) == ("queued", 1, None)
    assert requeued["error"] == "worker lost (attempt 1 of 3)"
    failed = job(conn, exhausted)
    assert (failed["state"], failed["attempt"], failed["error"]) == ("failed", 2, "worker lost (attempt 2 of 2)")
    assert failed["finished_at"] is not None
    assert job(conn, kept)["state"] == "running"
    assert [w["id"] for w in repository.list_workers(conn)] == [alive]

    # Reaping again finds nothing: the requeued jobs are not running and the dead worker is gone.
    again = run_async(dsn, lambda c: repository.reap_stale(c))
    assert (again.requeued, again.failed, again.workers_removed) == ([], [], 0)


def test_a_job_that_keeps_killing_its_worker_eventually_fails(dsn: str, conn: db.Connection) -> None:
    job_id = add(conn, max_attempts=3)
    for attempt in (1, 2, 3):
        (claimed,) = claim(dsn, new_worker())
        assert claimed.attempt == attempt
        result = run_async(dsn, lambda c: repository.reap_stale(c))
        assert (result.requeued, result.failed) == (([job_id], []) if attempt < 3 else ([], [job_id]))
    assert job(conn, job_id)["state"] == "failed"
    assert claim(dsn, new_worker()) == []


def test_overdue_runs_are_reaped_even_with_a_live_worker(dsn: str, conn: db.Connection) -> None:
    worker = new_worker()
    _register(dsn, worker, 0, conn)
    overdue = add(conn, timeout_s=60.0)
    punctual = add(conn, timeout_s=60.0)
    claim(dsn, worker)
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '75 seconds' WHERE id = %s", (overdue,))
    conn.run("UPDATE sched_jobs SET started_at = now() - interval '65 seconds' WHERE id = %s", (punctual,))
    result = run_async(dsn, lambda c: repository.reap_stale(c))
    assert (result.requeued, result.failed, result.workers_removed) == ([overdue], [], 0)
    assert job(conn, overdue)["error"] == "timed out after 00:01:00 (attempt 1 of 3)"
    assert job(conn, punctual)["state"] == "running"


def test_only_one_reaper_runs_at_a_time(dsn: str, conn: db.Connection) -> None:
    async def body(c: db.AsyncConnection) -> repository.ReapResult:
        other = await db.connect_async(dsn)
        try:
            async with other.transaction():
                await other.rows(query("JobReapLock"))
                return await repository.reap_stale(c)
        finally:
            await other.close()

    assert run_async(dsn, body).ran is False


# --- cleanup ---------------------------------------------------------------------------------------------


def test_cleanup_goes_by_finished_at_and_never_touches_live_jobs(conn: db.Connection) -> None:
    old, recent = "now() - interval '10 days'", "now() - interval '1 day'"
    ids: dict[str, int] = {}

    def put(name: str, state: str, created: str, finished: str | None, **extra: str) -> None:
        columns = {"task": "'t'", "state": f"'{state}'", "created_at": created, "finished_at": finished or "NULL"}
        columns.update(extra)
        sql = f"INSERT INTO sched_jobs ({', '.join(columns)}) VALUES ({', '.join(columns.values())}) RETURNING id"
        ids[name] = conn.row(sql)[0]

    put("old_succeeded", "succeeded", recent, old)
    put("old_failed", "failed", recent, old)
    put("old_cancelled", "cancelled", recent, old)
    put("recent_finish_old_create", "succeeded", old, recent)
    put("queued", "queued", old, None)
    put("scheduled", "queued", old, None, run_at="now() + interval '1 day'")
    put("waiting", "waiting", old, None, pending_deps="1")
    put("running", "running", old, None, worker_id=f"'{uuid.uuid4()}'", started_at=old)

    assert repository.count_finished(conn, 7 * 86400) == repository.CleanupCounts(1, 1, 1)
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (8,)
    deleted = repository.delete_finished_batch(conn, 7 * 86400, 100)
    assert (deleted.succeeded, deleted.failed, deleted.cancelled) == (1, 1, 1)
    left = {row[0] for row in conn.rows("SELECT id FROM sched_jobs_all")}
    assert left == {ids[n] for n in ("recent_finish_old_create", "queued", "scheduled", "waiting", "running")}
    assert repository.delete_finished_batch(conn, 7 * 86400, 100).total == 0
    # A shorter retention reaches the recently finished job, and still no live one.
    assert repository.delete_finished_batch(conn, 3600, 100).total == 1
    assert {row[0] for row in conn.rows("SELECT state::text FROM sched_jobs_all")} == {"queued", "waiting", "running"}


def test_cleanup_works_in_batches(conn: db.Connection) -> None:
    conn.run(
        "INSERT INTO sched_jobs (task, state, finished_at) "
        "SELECT 't', 'succeeded', now() - interval '30 days' - n * interval '1 minute' FROM generate_series(1, 5) n"
    )
    assert [repository.delete_finished_batch(conn, 86400, 2).total for _ in range(4)] == [2, 2, 1, 0]


def test_cleanup_keeps_a_failed_parent_while_a_job_depends_on_it(conn: db.Connection) -> None:
    # docs/protocol.md, "Dependencies": deleting the parent would delete the dependency, and the dependent's
    # retry would then run it although its parent never succeeded.
    parent = add(conn)
    child = add(conn, after=[parent])
    conn.run(
        "UPDATE sched_jobs SET state = 'failed', finished_at = now() - interval '30 days' WHERE id = %s", (parent,)
    )
    conn.run("UPDATE sched_jobs SET state = 'cancelled', pending_deps = 0, finished_at = now() WHERE id = %s", (child,))
    assert repository.count_finished(conn, 86400).total == 0
    assert repository.delete_finished_batch(conn, 86400, 100).total == 0
    result = repository.retry_jobs(conn, [child])
    assert (result.queued, result.refused) == ([], [child])  # its failed parent still holds it back
    # Once the dependent is gone, so is the parent: in the next batch of the same cleanup.
    conn.run(
        "UPDATE sched_jobs SET state = 'cancelled', finished_at = now() - interval '30 days' WHERE id = %s", (child,)
    )
    assert [repository.delete_finished_batch(conn, 86400, 100).total for _ in range(3)] == [1, 1, 0]
