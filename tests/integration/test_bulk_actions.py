"""Bulk retry, cancel and purge against a real PostgreSQL: each filter, previews that change nothing, batches,
two bulk retries at once on separate connections, a second run that changes nothing, running jobs asked to
stop, and purges that keep what the dependency rules need."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg
import psycopg.sql
import pytest

from pgsched import bulk, db, repository
from pgsched.errors import InvalidInput
from pgsched.models import NewJob, Outcome


def add(conn: db.Connection, task: str = "t", **fields: object) -> int:
    return repository.enqueue(conn, NewJob(task=task, **fields)).id  # type: ignore[arg-type]


def claim(dsn: str, queue: str = "default", tasks: tuple[str, ...] = ("t", "u"), limit: int = 5000) -> tuple:
    worker = str(uuid.uuid4())

    async def main() -> list:
        conn = await db.connect_async(dsn)
        try:
            return await repository.claim_jobs(conn, worker, queue, list(tasks), limit)
        finally:
            await conn.close()

    return worker, asyncio.run(main())


def finish(dsn: str, worker: str, claimed: list, kind: str, error: str | None = None) -> None:
    async def main() -> None:
        conn = await db.connect_async(dsn)
        try:
            outcomes = [Outcome(j.id, j.lease, kind, error=error, retryable=False) for j in claimed]
            await repository.record_outcomes(conn, worker, outcomes)
        finally:
            await conn.close()

    asyncio.run(main())


def run_all(dsn: str, kind: str, error: str | None = None, queue: str = "default", tasks=("t", "u")) -> list[int]:
    worker, claimed = claim(dsn, queue, tasks)
    finish(dsn, worker, claimed, kind, error)
    return sorted(j.id for j in claimed)


def states(conn: db.Connection) -> dict[int, tuple]:
    rows = conn.rows("SELECT id, state::text, attempt, cancel_requested_at IS NOT NULL FROM sched_jobs_all")
    return {r[0]: r[1:] for r in rows}


def matching(conn: db.Connection, action: str, **options: object) -> int:
    return repository.count_matching(conn, bulk.build_filter(action, **options))  # type: ignore[arg-type]


def test_each_filter_narrows_the_match(dsn: str, conn: db.Connection) -> None:
    plain = add(conn)
    grouped = add(conn, group="tenant:1")
    keyed = add(conn, key="invoice-7")
    other_task = add(conn, "u")
    run_all(dsn, "failed", "Traceback: Connection TIMEOUT while talking")
    elsewhere = add(conn, queue="mail")
    run_all(dsn, "failed", "bad address", queue="mail")
    cancelled = add(conn)
    repository.cancel_job(conn, cancelled)
    conn.run("UPDATE sched_jobs SET finished_at = now() - interval '2 hours' WHERE id = %s", (plain,))

    assert matching(conn, "retry") == 6
    assert matching(conn, "retry", queue="mail") == 1
    assert matching(conn, "retry", task="u") == 1
    assert matching(conn, "retry", states=["cancelled"]) == 1
    assert matching(conn, "retry", states=["failed"]) == 5
    assert matching(conn, "retry", error_like="connection timeout") == 4
    assert matching(conn, "retry", error_like="ADDRESS") == 1
    assert matching(conn, "retry", since="1h") == 5
    assert matching(conn, "retry", group="tenant:1") == 1
    assert matching(conn, "retry", key="invoice-7") == 1
    assert matching(conn, "retry", queue="default", task="t", error_like="timeout", since="1h") == 2
    assert matching(conn, "retry", key="no-such-key") == 0
    sample = repository.sample_matching(conn, bulk.build_filter("retry", error_like="timeout"), 2)
    assert [s["id"] for s in sample] == [other_task, keyed]
    assert sample[0]["error"] == "Traceback: Connection TIMEOUT while talking" and sample[0]["state"] == "failed"

    # The filters pick exactly what is acted on.
    report = bulk.perform(conn, "retry", bulk.build_filter("retry", error_like="timeout", since="1h"))
    assert sorted(report.queued) == sorted([grouped, keyed, other_task])
    assert states(conn)[plain][0] == "failed" and states(conn)[elsewhere][0] == "failed"
    assert states(conn)[cancelled][0] == "cancelled"


def test_since_counts_live_jobs_from_their_creation(conn: db.Connection) -> None:
    fresh = add(conn)
    old = add(conn)
    conn.run("UPDATE sched_jobs SET created_at = now() - interval '3 hours' WHERE id = %s", (old,))
    report = bulk.perform(conn, "cancel", bulk.build_filter("cancel", since="1h"))
    assert (report.matched, report.cancelled) == (1, 1)
    assert states(conn)[fresh][0] == "cancelled" and states(conn)[old][0] == "queued"


def test_a_dry_run_changes_nothing(dsn: str, conn: db.Connection) -> None:
    for _ in range(3):
        add(conn)
    run_all(dsn, "failed", "boom")
    add(conn)
    before = conn.rows("SELECT * FROM sched_jobs_all ORDER BY id")
    for action in ("retry", "cancel", "purge"):
        report = bulk.preview(conn, action, bulk.build_filter(action))
        assert report.matched == (1 if action == "cancel" else 3)
        assert report.changed == 0 and report.dry_run
    assert conn.rows("SELECT * FROM sched_jobs_all ORDER BY id") == before


def test_states_a_command_cannot_act_on_are_refused() -> None:
    with pytest.raises(InvalidInput, match="retry cannot act on queued jobs: it acts on failed and cancelled jobs"):
        bulk.build_filter("retry", states=["queued"])
    with pytest.raises(InvalidInput, match="cancel cannot act on failed jobs"):
        bulk.build_filter("cancel", states=["failed"])
    with pytest.raises(InvalidInput, match="purge cannot act on running jobs"):
        bulk.build_filter("purge", states=["running"])
    with pytest.raises(InvalidInput, match="invalid --state 'done'"):
        bulk.build_filter("purge", states=["done"])
    with pytest.raises(InvalidInput, match="--since"):
        bulk.build_filter("purge", since="soon")


def test_batches_walk_the_table_once_and_skip_nothing(dsn: str, conn: db.Connection) -> None:
    failed = []
    for n in range(60):
        job = add(conn, "t" if n % 3 else "u")
        failed.append(job)
    run_all(dsn, "failed", "boom")
    live = [add(conn) for _ in range(10)]
    # 7 per transaction, and a walk of 7 * 20 ids: several batches, each its own transaction.
    report = bulk.perform(conn, "retry", bulk.build_filter("retry", task="t"), batch_size=7)
    assert report.changed == 40 and report.batches >= 6
    assert sorted(report.queued) == sorted(j for n, j in enumerate(failed) if n % 3)
    # A walk shorter than the gaps between matches still finds every match, a window at a time.
    cursor: int | None = 0
    taken: list[int] = []
    job_filter = bulk.build_filter("retry", task="u")
    while cursor is not None:
        batch = repository.retry_batch(conn, job_filter, cursor, 2, 5)
        assert len(batch.changed) <= 2
        taken.extend(batch.changed)
        cursor = batch.cursor
    assert sorted(taken) == [j for n, j in enumerate(failed) if n % 3 == 0]
    assert all(states(conn)[j][0] == "queued" for j in live)


def test_retry_resets_attempts_and_sends_dependents_back_to_waiting(dsn: str, conn: db.Connection) -> None:
    parent = add(conn, max_attempts=1)
    child = add(conn, after=[parent])
    run_all(dsn, "failed", "boom")
    assert states(conn)[child][0] == "cancelled"
    # Only the child matches: its dependency failed, so it is refused, and nothing changes.
    report = bulk.perform(conn, "retry", bulk.build_filter("retry", states=["cancelled"]))
    assert (report.matched, report.changed, report.refused) == (1, 0, [child])
    # Both: the dependency first, then its dependent, which waits for it.
    report = bulk.perform(conn, "retry", bulk.build_filter("retry"), batch_size=1)
    assert (report.queued, report.waiting, report.refused) == ([parent], [child], [])
    assert states(conn)[parent] == ("queued", 0, False) and states(conn)[child] == ("waiting", 0, False)


def test_two_bulk_retries_at_once_change_each_job_once_and_every_job_together(dsn: str, conn: db.Connection) -> None:
    repository.enqueue_many(conn, [NewJob(task="t")] * 3000)
    failed = run_all(dsn, "failed", "boom")
    assert len(failed) == 3000
    start = threading.Barrier(2)
    reports: list[bulk.BulkReport] = []
    errors: list[BaseException] = []

    def retry_all() -> None:
        try:
            with db.connect(dsn) as own:
                start.wait()
                reports.append(bulk.perform(own, "retry", bulk.build_filter("retry", queue="default"), batch_size=25))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    first, second = (set(r.queued) for r in reports)
    assert not first & second
    assert sorted(first | second) == failed
    assert sum(r.changed for r in reports) == 3000
    assert conn.rows("SELECT DISTINCT state::text, attempt FROM sched_jobs_all") == [("queued", 0)]


def test_a_second_run_changes_nothing(dsn: str, conn: db.Connection) -> None:
    for _ in range(5):
        add(conn)
    run_all(dsn, "failed", "boom")
    cancelled = add(conn)
    repository.cancel_job(conn, cancelled)
    running = add(conn)
    claim(dsn)
    add(conn)
    retry = bulk.build_filter("retry", states=["failed"])
    assert bulk.perform(conn, "retry", retry).changed == 5
    assert bulk.perform(conn, "retry", retry).changed == 0
    cancel = bulk.build_filter("cancel")
    first = bulk.perform(conn, "cancel", cancel)
    assert (first.cancelled, first.requested) == (6, 1)
    again = bulk.perform(conn, "cancel", cancel)
    assert (again.matched, again.changed) == (0, 0)
    assert states(conn)[running] == ("running", 1, True)
    purge = bulk.build_filter("purge", states=["cancelled"])
    assert bulk.perform(conn, "purge", purge).changed == 7
    assert bulk.perform(conn, "purge", purge).changed == 0


def test_cancelling_a_running_job_records_a_request_and_tells_its_worker(dsn: str, conn: db.Connection) -> None:
    running = add(conn)
    claim(dsn)
    waiting_parent = add(conn)
    child = add(conn, after=[waiting_parent])
    with db.connect(dsn) as listener:
        listener.raw.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(repository.cancel_channel())))
        report = bulk.perform(conn, "cancel", bulk.build_filter("cancel", task="t"))
        notes = [n.payload for n in listener.raw.notifies(timeout=2, stop_after=1)]
    assert notes == [str(running)]
    assert (report.matched, report.requested, report.cancelled, report.dependents_cancelled) == (3, 1, 2, 0)
    assert states(conn)[running] == ("running", 1, True)
    assert states(conn)[waiting_parent][0] == "cancelled" and states(conn)[child][0] == "cancelled"


def test_a_cancel_batch_changes_all_its_jobs_in_one_statement(dsn: str, conn: db.Connection) -> None:
    running = add(conn)
    worker, _ = claim(dsn)
    queued = [add(conn) for _ in range(4)]
    parent = add(conn)
    waiting = add(conn, "u", after=[parent])
    grandchild = add(conn, "u", after=[waiting])
    with db.connect(dsn) as listener:
        listener.raw.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(repository.cancel_channel())))
        batch = repository.cancel_batch(conn, bulk.build_filter("cancel", task="t"), bulk.FIRST_ID, 100, 1000)
        notes = [n.payload for n in listener.raw.notifies(timeout=2, stop_after=1)]
    assert (batch.matched, batch.changed, batch.requested) == (6, sorted([running, *queued, parent]), [running])
    assert batch.dependents_cancelled == 2 and notes == [str(running)]
    # A row keeps the number of the command that wrote it within its transaction (cmin): one number for every
    # job of the batch shows they were written by one statement, not one statement per job. The dependents are
    # cancelled by the statement after it.
    written = dict(conn.rows("SELECT id, cmin::text FROM sched_jobs"))
    assert len({written[j] for j in (running, *queued, parent)}) == 1
    assert written[waiting] == written[grandchild] != written[parent]
    row = "SELECT state::text, finished_at IS NULL, error, cancel_requested_at IS NOT NULL, worker_id::text"
    assert conn.row(row + " FROM sched_jobs WHERE id = %s", (running,)) == ("running", True, None, True, worker)
    for job in (*queued, parent):
        assert conn.row(row + " FROM sched_jobs WHERE id = %s", (job,)) == (
            "cancelled",
            False,
            "cancelled by request",
            True,
            None,
        )
    for job in (waiting, grandchild):
        assert conn.row(row + " FROM sched_jobs WHERE id = %s", (job,)) == (
            "cancelled",
            False,
            "a job it depends on failed or was cancelled",
            False,
            None,
        )


def test_a_job_that_finished_after_the_preview_is_left_alone(dsn: str, conn: db.Connection) -> None:
    first, second, third = add(conn), add(conn), add(conn)
    cancel = bulk.build_filter("cancel", queue="default")
    assert bulk.preview(conn, "cancel", cancel).matched == 3
    worker, claimed = claim(dsn, limit=1)
    finish(dsn, worker, claimed, "succeeded")
    report = bulk.perform(conn, "cancel", cancel)
    assert (report.matched, report.cancelled, report.requested) == (2, 2, 0)
    assert states(conn) == {
        first: ("succeeded", 1, False),
        second: ("cancelled", 0, True),
        third: ("cancelled", 0, True),
    }


def _waits_for_a_lock(conn: db.Connection, pid: int) -> bool:
    return conn.row("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)) == (True,)


def test_a_cancel_locks_in_id_order_and_passes_over_a_job_that_finished_while_it_waited(
    dsn: str, conn: db.Connection
) -> None:
    running = add(conn)
    claim(dsn)
    ids = sorted([running, *(add(conn) for _ in range(4))])
    # A worker's write in flight: the running job's row stays locked until it commits its success.
    writer = psycopg.connect(dsn)
    writer.execute("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE id = %s", [running])
    done: list = []
    with db.connect(dsn) as canceller:
        pid = canceller.raw.info.backend_pid
        # The ids come highest first; the statement still locks lowest first.
        thread = threading.Thread(target=lambda: done.append(repository.cancel_in_transaction(canceller, ids[::-1])))
        thread.start()
        while thread.is_alive() and not _waits_for_a_lock(conn, pid):
            thread.join(0.05)
        # While it waits for the running job (the lowest id), it holds no other row: a worker's batch write, which
        # also goes by id, can never hold a row it needs while waiting for one it holds.
        free = conn.rows("SELECT id FROM sched_jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE SKIP LOCKED", (ids,))
        assert [r[0] for r in free] == ids[1:]
        writer.commit()
        writer.close()
        thread.join(30)
    (result,) = done
    # The job finished while the cancel waited for it: the statement re-read it and left it alone.
    assert (result.cancelled, result.requested) == (ids[1:], [])
    assert states(conn)[running] == ("succeeded", 1, False)


def test_cancel_takes_dependents_along_as_single_cancel_does(conn: db.Connection) -> None:
    parent = add(conn, "u")
    child = add(conn, after=[parent])
    grandchild = add(conn, after=[child])
    report = bulk.perform(conn, "cancel", bulk.build_filter("cancel", task="u"))
    assert (report.cancelled, report.dependents_cancelled) == (1, 2)
    assert {states(conn)[j][0] for j in (parent, child, grandchild)} == {"cancelled"}


def test_purge_never_deletes_a_live_job(dsn: str, conn: db.Connection) -> None:
    for _ in range(4):
        add(conn)
    done = run_all(dsn, "succeeded")
    queued = add(conn)
    waiting = add(conn, after=[queued])
    report = bulk.perform(conn, "purge", bulk.build_filter("purge", queue="default"))
    assert report.changed == 4 and report.deleted == {"succeeded": 4, "failed": 0, "cancelled": 0}
    assert sorted(states(conn)) == [queued, waiting]
    assert not set(done) & set(states(conn))


def test_purge_keeps_a_failed_job_that_a_remaining_job_depends_on(dsn: str, conn: db.Connection) -> None:
    parent = add(conn, "u", max_attempts=1)
    child = add(conn, after=[parent])
    run_all(dsn, "failed", "boom", tasks=("u",))
    assert states(conn)[child][0] == "cancelled"
    # Deleting the parent alone would drop the child's dependency row: a retry of the child would then run it
    # although its parent never succeeded. So the parent stays.
    report = bulk.perform(conn, "purge", bulk.build_filter("purge", task="u"))
    assert (report.matched, report.changed, report.refused) == (1, 0, [parent])
    assert conn.rows("SELECT job_id, depends_on FROM sched_job_deps") == [(child, parent)]
    # With its dependent in the same purge, both go (dependents first: the walk runs down the ids).
    report = bulk.perform(conn, "purge", bulk.build_filter("purge", states=["failed", "cancelled"]), batch_size=1)
    assert (report.changed, report.refused) == (2, [])
    assert states(conn) == {}


def test_purging_a_succeeded_parent_leaves_its_waiting_dependent_waiting(dsn: str, conn: db.Connection) -> None:
    first = add(conn, "u")
    second = add(conn, "t", delay_s=3600)
    child = add(conn, after=[first, second])
    run_all(dsn, "succeeded", tasks=("u",))
    assert conn.row("SELECT state::text, pending_deps FROM sched_jobs_all WHERE id = %s", (child,)) == ("waiting", 1)
    report = bulk.perform(conn, "purge", bulk.build_filter("purge", task="u"))
    assert report.changed == 1 and first not in states(conn)
    # The child still waits for the other parent, and runs only after it succeeded.
    assert conn.row("SELECT state::text, pending_deps FROM sched_jobs_all WHERE id = %s", (child,)) == ("waiting", 1)
    conn.run("UPDATE sched_jobs SET run_at = now(), deferred = false WHERE id = %s", (second,))
    run_all(dsn, "succeeded", tasks=("t",))
    assert conn.row("SELECT state::text, pending_deps FROM sched_jobs_all WHERE id = %s", (child,)) == ("queued", 0)
