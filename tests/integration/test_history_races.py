"""The history of succeeded jobs under concurrency and in the corners (docs/design.md, "History and cleanup"): a
success racing an add --after, a cancel or a cleanup; fencing of sched_finish_succeeded; what the roles may do
with it; two cleanups at once; cleanup in an installation of its own schema; the listings' plans over a large
history."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.cli import run_sched

from pgsched import admin, db, repository, sqlfiles
from pgsched.errors import WrongState
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.repository.producers import _lock_dependencies, insert_params
from pgsched.sqlfiles import query
from tests.support.connections import run_async

DAY = 86_400.0


def _claim(dsn: str, count: int = 1, worker: str | None = None) -> tuple[str, list]:
    worker = worker or str(uuid.uuid4())
    return worker, run_async(dsn, lambda c: repository.claim_jobs(c, worker, "default", ["t"], count))


def _succeed_uncommitted(raw: psycopg.Connection, worker: str, jobs: list) -> list[int]:
    """What record_outcomes does for successes, left uncommitted in ``raw``: the move, then settling dependents."""
    rows = raw.execute(
        "SELECT id, has_dependents FROM sched_finish_succeeded(%s::uuid, %s, %s, NULL)",
        (worker, [j.id for j in jobs], [j.lease for j in jobs]),
    ).fetchall()
    settle = [r[0] for r in rows if r[1]]
    if settle:
        raw.execute(query("JobSettleDependents"), {"ids": settle})
    return [r[0] for r in rows]


def _wait_blocked(dsn: str, pid: int) -> None:
    """Until backend ``pid`` waits for a lock (synchronisation, not a timed assertion)."""
    with psycopg.connect(dsn, autocommit=True) as watch:
        for _ in range(1500):
            row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_an_add_after_a_job_whose_success_is_committing_counts_it_as_done(dsn: str, conn: db.Connection) -> None:
    """The success deletes the parent's row while the add waits on it: the add then finds it in the history."""
    parent = repository.enqueue(conn, NewJob(task="t")).id
    worker, jobs = _claim(dsn)
    with psycopg.connect(dsn) as completing:
        _succeed_uncommitted(completing, worker, jobs)
        adder = db.connect(dsn)
        pid = adder.row("SELECT pg_backend_pid()")[0]
        thread, out = _in_thread(lambda: repository.enqueue(adder, NewJob(task="t", after=[parent])))
        _wait_blocked(dsn, pid)
        completing.commit()
        thread.join()
        adder.close()
    (added,) = out
    assert not isinstance(added, BaseException), added
    child = repository.get_job(conn, added.id)
    assert (child["state"], child["pending_deps"], child["depends_on"]) == ("queued", 0, [parent])


def test_a_success_waiting_for_an_add_after_releases_the_new_dependent(dsn: str, conn: db.Connection) -> None:
    """The add locks the parent first; the success waits, then sees the new edge and releases the child."""
    parent = repository.enqueue(conn, NewJob(task="t")).id
    worker, jobs = _claim(dsn)
    adder = db.connect(dsn)
    completing = psycopg.connect(dsn)
    with adder.transaction():
        child = repository.enqueue(adder, NewJob(task="t", after=[parent])).id
        thread, out = _in_thread(lambda: (_succeed_uncommitted(completing, worker, jobs), completing.commit()))
        _wait_blocked(dsn, completing.info.backend_pid)
    thread.join()
    adder.close()
    completing.close()
    assert not isinstance(out[0], BaseException), out[0]
    assert repository.get_job(conn, child)["state"] == "queued"
    assert repository.get_job(conn, parent)["state"] == "succeeded"


def test_a_cancel_racing_a_success_reports_the_success(dsn: str, conn: db.Connection) -> None:
    job = repository.enqueue(conn, NewJob(task="t")).id
    worker, jobs = _claim(dsn)
    with psycopg.connect(dsn) as completing:
        _succeed_uncommitted(completing, worker, jobs)
        canceller = db.connect(dsn)
        pid = canceller.row("SELECT pg_backend_pid()")[0]
        thread, out = _in_thread(lambda: repository.cancel_job(canceller, job))
        _wait_blocked(dsn, pid)
        completing.commit()
        thread.join()
        canceller.close()
    assert isinstance(out[0], WrongState) and "already succeeded" in str(out[0]), out
    assert conn.rows("SELECT state::text FROM sched_jobs_all WHERE id = %s", (job,)) == [("succeeded",)]


def test_a_stale_lease_or_another_workers_id_moves_nothing(dsn: str, conn: db.Connection) -> None:
    job = repository.enqueue(conn, NewJob(task="t")).id
    first, (run1,) = _claim(dsn)
    conn.run("UPDATE sched_jobs SET state = 'queued', worker_id = NULL WHERE id = %s", (job,))  # as a reap does
    second, (run2,) = _claim(dsn)
    assert run2.lease != run1.lease
    finish = "SELECT count(*) FROM sched_finish_succeeded(%s::uuid, %s, %s, NULL)"
    assert conn.row(finish, (first, [job], [run1.lease])) == (0,)  # the old run
    assert conn.row(finish, (first, [job], [run2.lease])) == (0,)  # the new lease, the wrong worker
    assert conn.row(finish, (second, [job], [run1.lease])) == (0,)  # the right worker, the old lease
    assert conn.row("SELECT state::text FROM sched_jobs WHERE id = %s", (job,)) == ("running",)
    assert conn.row(finish, (second, [job], [run2.lease])) == (1,)
    assert conn.row(finish, (second, [job], [run2.lease])) == (0,)  # a replay moves nothing twice
    assert conn.row("SELECT count(*) FROM sched_jobs_all WHERE id = %s", (job,)) == (1,)


LOGINS = {"producer": "sched_history_producer_login", "worker": "sched_history_worker_login"}


@pytest.fixture
def logins(sched: Callable, server_dsn: str, dsn: str) -> dict[str, str]:
    done = sched("migrate", "--roles")
    assert done.returncode == 0, done.stderr
    with psycopg.connect(server_dsn, autocommit=True) as su:
        for kind, login in LOGINS.items():
            su.execute(
                f"DO $$ BEGIN CREATE ROLE {login} LOGIN; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
            # The installation's own group role (sched_worker in public, sched_worker_<schema> elsewhere).
            su.execute(f"GRANT {sqlfiles.role_name(f'sched_{kind}')} TO {login}")
    return {kind: make_conninfo(dsn, user=login) for kind, login in LOGINS.items()}


def test_the_roles_and_the_two_history_functions(logins: dict[str, str], dsn: str, conn: db.Connection) -> None:
    queued = repository.enqueue(conn, NewJob(task="t")).id
    running = repository.enqueue(conn, NewJob(task="t")).id
    conn.run("UPDATE sched_jobs SET run_at = now() + interval '1 day', deferred = true WHERE id = %s", (queued,))
    holder, (run,) = _claim(dsn)
    old = repository.enqueue(conn, NewJob(task="t")).id
    conn.run(
        "WITH d AS (DELETE FROM sched_jobs WHERE id = %s RETURNING *) "
        "INSERT INTO sched_job_history SELECT d.id, d.queue, d.task, d.payload, 'succeeded', d.priority, d.run_at, "
        "d.attempt, d.max_attempts, d.timeout, d.dedupe_key, d.worker_id, d.pending_deps, d.deferred, "
        "d.has_dependents, d.result, d.error, d.progress, d.cancel_requested_at, d.created_at, d.started_at, "
        "now() - interval '2 days', d.lease, d.group_name, d.trace_context, 5 FROM d",
        (old,),
    )
    with (
        psycopg.connect(logins["producer"], autocommit=True) as producer,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        producer.execute("SELECT * FROM sched_finish_succeeded(%s::uuid, %s, %s, NULL)", (holder, [running], [1]))
    with psycopg.connect(logins["worker"], autocommit=True) as worker:
        # A temporary table named like the history cannot stand in for it (pg_temp is searched last).
        worker.execute("CREATE TEMP TABLE sched_job_history (LIKE pg_class)")
        # A queued job cannot be made to vanish: only running rows with their worker and lease move.
        assert worker.execute(
            "SELECT count(*) FROM sched_finish_succeeded(%s::uuid, %s, %s, NULL)", (holder, [queued], [0])
        ).fetchone() == (0,)
        # The worker role may not empty a slot.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.execute("SELECT sched_history_truncate(5, now())")
    assert conn.row("SELECT count(*) FROM sched_job_history WHERE id = %s", (old,)) == (1,)
    assert conn.row("SELECT state::text FROM sched_jobs WHERE id = %s", (queued,)) == ("queued",)
    assert run.id == running


def _fill_slots(conn: db.Connection, slots: range, per_slot: int, days: float) -> None:
    conn.run(
        "INSERT INTO sched_job_history (id, queue, task, payload, state, priority, run_at, attempt, max_attempts, "
        "timeout, pending_deps, deferred, has_dependents, created_at, finished_at, slot) "
        "SELECT nextval('sched_jobs_id_seq'), 'default', 't', '{}', 'succeeded', 0, now(), 1, 3, '1 hour', 0, "
        "false, false, now(), now() - make_interval(secs => %s), s "
        "FROM unnest(%s::int[]) s, generate_series(1, %s)",
        (days * DAY, list(slots), per_slot),
    )


def test_a_cleanup_past_its_fifth_slot_does_not_wait_on_slots_it_is_not_emptying(dsn: str, conn: db.Connection) -> None:
    """sched_history_truncate reads the history through the parent with "slot = p_slot", planned for each call:
    a cached generic plan (PL/pgSQL's choice from the sixth call in a session) would lock every slot, so emptying
    slot 14 would wait on slot 7 that another session holds exclusively (another cleanup emptying it), give up,
    or deadlock."""
    _fill_slots(conn, range(1, 16), 3, 2)
    with psycopg.connect(dsn, autocommit=True) as cleaner, psycopg.connect(dsn) as other:
        for slot in (8, 9, 10, 11, 12):
            assert cleaner.execute("SELECT sched_history_truncate(%s, now() - interval '1 day')", (slot,)).fetchone()
        other.execute("LOCK TABLE sched_job_history_07 IN ACCESS EXCLUSIVE MODE")
        emptied = cleaner.execute("SELECT sched_history_truncate(14, now() - interval '1 day')").fetchone()
        other.rollback()
    assert emptied == (3,)


def test_two_cleanups_emptying_many_slots_at_once_both_finish(dsn: str, conn: db.Connection) -> None:
    """Two hosts run cleanup at the same time (docs: cleanups on many hosts share the work), with 15 slots past
    the retention: neither fails (deadlock) and every slot ends empty."""
    failures: list[BaseException] = []

    def run(barrier: threading.Barrier) -> None:
        try:
            with db.connect(dsn) as own:
                barrier.wait(timeout=30)
                admin.cleanup(own, DAY, 100)
        except BaseException as exc:
            failures.append(exc)

    for _ in range(3):
        conn.run("TRUNCATE sched_job_history")
        conn.run("UPDATE sched_history SET current_slot = 0")
        _fill_slots(conn, range(1, 16), 20, 2)
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(barrier,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        admin.cleanup(conn, DAY, 100)  # whatever a lock timeout left
    assert not failures, failures
    assert conn.row("SELECT count(*) FROM sched_job_history") == (0,)


def test_a_dry_run_with_every_slot_full_counts_what_cleanup_deletes(dsn: str, conn: db.Connection) -> None:
    """All 16 slots hold jobs past the retention: the current one cannot move on (its next is not empty), the
    other 15 go; the next cleanup moves it on and empties it."""
    _fill_slots(conn, range(0, 16), 2, 2)
    dry = admin.cleanup(conn, DAY, 100, dry_run=True)
    done = admin.cleanup(conn, DAY, 100)
    assert (dry.would_delete, dry.slots_emptied) == (done.deleted, done.slots_emptied) == (30, 15)
    assert conn.row("SELECT current_slot FROM sched_history") == (0,)
    dry = admin.cleanup(conn, DAY, 100, dry_run=True)
    done = admin.cleanup(conn, DAY, 100)
    assert (dry.would_delete, dry.slots_emptied) == (done.deleted, done.slots_emptied) == (2, 1)
    assert conn.row("SELECT current_slot FROM sched_history") == (1,)
    assert conn.row("SELECT count(*) FROM sched_job_history") == (0,)


def test_an_exact_cleanup_racing_an_add_after_leaves_no_edge_to_a_deleted_job(dsn: str, conn: db.Connection) -> None:
    """The add finds the parent in the history and locks it (JobHistoryStates, KEY SHARE) until its edge commits:
    a cleanup --exact meanwhile passes the parent over (SKIP LOCKED), and a later one deletes it with the edge.
    Without the lock, nothing (no foreign key) would stop an edge naming a deleted job."""
    parent = repository.enqueue(conn, NewJob(task="t")).id
    worker, jobs = _claim(dsn)
    run_async(
        dsn, lambda c: repository.record_outcomes(c, worker, [Outcome(parent, jobs[0].lease, OutcomeKind.SUCCEEDED)])
    )
    _fill_slots(conn, range(0, 1), 1, 0)  # a job of today keeps slot 0 from being emptied whole
    conn.run("UPDATE sched_job_history SET finished_at = now() - interval '2 days' WHERE id = %s", (parent,))
    with db.connect(dsn) as adder, adder.transaction():
        # The add's own steps, in its order (producers.enqueue with --after).
        assert _lock_dependencies(adder, [parent]) == 0
        assert admin.cleanup(conn, DAY, 100, exact=True).succeeded == 0
        child = adder.row(query("JobInsert"), _insert_params())[0]
        adder.run(query("JobDependencyInsertMany"), {"job_id": child, "depends_on": [parent]})
    assert repository.get_job(conn, child)["depends_on"] == [parent]
    assert admin.cleanup(conn, DAY, 100, exact=True).succeeded == 1
    assert conn.rows("SELECT job_id, depends_on FROM sched_job_deps") == []
    orphans = conn.rows(
        "SELECT job_id, depends_on FROM sched_job_deps d "
        "WHERE NOT EXISTS (SELECT 1 FROM sched_jobs_all j WHERE j.id = d.depends_on)"
    )
    assert orphans == [], (
        f"edge to a deleted job: {orphans}; status shows {repository.get_job(conn, child)['depends_on']}"
    )


def _insert_params() -> dict:
    """The parameters producers.enqueue gives JobInsert for a plain job with dependencies all done."""
    return {**insert_params(NewJob(task="t")), "admitted": True}


def test_cleanup_in_an_installation_of_its_own_schema(empty_dsn: str) -> None:
    for schema in ("public", "tenant_b"):
        assert run_sched(empty_dsn, "migrate", schema=schema).returncode == 0
        for _ in range(3):
            assert run_sched(empty_dsn, "add", "sched.noop", schema=schema).returncode == 0
        drained = run_sched(empty_dsn, "worker", "--burst", schema=schema)
        assert drained.returncode == 0, drained.stderr
    with psycopg.connect(empty_dsn, autocommit=True) as raw:
        for schema in ("public", "tenant_b"):
            raw.execute(f"UPDATE {schema}.sched_job_history SET finished_at = now() - interval '2 days'")
        done = run_sched(empty_dsn, "cleanup", "--older-than", "1d", schema="tenant_b")
        assert done.returncode == 0, done.stderr
        assert "3 succeeded" in done.stdout and "1 history slot(s) emptied" in done.stdout, done.stdout
        counts = {
            schema: raw.execute(f"SELECT count(*) FROM {schema}.sched_job_history").fetchone()[0]
            for schema in ("public", "tenant_b")
        }
        slots = {
            schema: raw.execute(f"SELECT current_slot FROM {schema}.sched_history").fetchone()[0]
            for schema in ("public", "tenant_b")
        }
    assert counts == {"public": 3, "tenant_b": 0}
    assert slots == {"public": 0, "tenant_b": 1}


HISTORY = 100_000


@pytest.mark.slow
def test_the_listings_read_the_historys_indexes(dsn: str, conn: db.Connection) -> None:
    """~100k succeeded jobs in two slots and some failed ones in sched_jobs: the all-jobs and finished listings
    merge index walks of both tables instead of reading the history whole."""
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, worker_id, error) "
        "SELECT 'default', 't', 'failed', 1, now(), now() - interval '1 second' * g, gen_random_uuid(), 'boom' "
        "FROM generate_series(1, 2000) g"
    )
    conn.run(
        "INSERT INTO sched_job_history (id, queue, task, payload, state, priority, run_at, attempt, max_attempts, "
        "timeout, pending_deps, deferred, has_dependents, created_at, finished_at, slot) "
        "SELECT nextval('sched_jobs_id_seq'), CASE WHEN g %% 10 = 0 THEN 'mail' ELSE 'default' END, 't', '{}', "
        "'succeeded', 0, now(), 1, 3, '1 hour', 0, false, false, now(), now() - interval '1 second' * (g %% 7200), "
        "CASE WHEN g <= %s / 2 THEN 0 ELSE 1 END FROM generate_series(1, %s) g",
        (HISTORY, HISTORY),
    )
    conn.run("VACUUM ANALYZE sched_jobs")
    conn.run("VACUUM ANALYZE sched_job_history")
    base = {"queue": "default", "task": None, "key": None, "group": None, "walk": 5000, "limit": 50}
    cursors = {
        "BrowseJobsAll": {"after_priority": 1001, "after_at": "infinity", "after_id": 2**63 - 1},
        "BrowseJobsFinished": {"after_priority": 1001, "after_at": "infinity", "after_id": 2**63 - 1},
    }
    with psycopg.connect(dsn) as raw:
        for name, cursor in cursors.items():
            for state in ("succeeded", "failed"):
                params = {**base, **cursor, "state": state}
                plan = "\n".join(r[0] for r in raw.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query(name), params))
                assert "Seq Scan" not in plan, plan
                assert "Sort" not in plan.split("Merge Append")[0] or "Merge Append" in plan, plan
                assert "sched_job_history_00" in plan and "sched_job_history_01" in plan, plan
