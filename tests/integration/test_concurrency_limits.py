"""Concurrency limits against a real PostgreSQL (docs/protocol.md, "Concurrency limits"): max_running and
group_concurrency cap each claim, hold under concurrent claimers on their own connections, give the slot back
however a run ends, combine with pause and the rate limit, and leave the claim of a queue without them as it was."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid

import psycopg
import pytest
from support.marks import NeverFull

from pgsched import db, repository
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query


def add(conn: db.Connection, groups: list[str | None], queue: str = "q", task: str = "t") -> list[int]:
    return [e.id for e in repository.enqueue_many(conn, [NewJob(task=task, queue=queue, group=g) for g in groups])]


async def _claim(dsn: str, worker: str, limit: int, queue: str, marks: repository.ReadyMarks | None) -> list:
    conn = await db.connect_async(dsn)
    try:
        return await repository.claim_jobs(conn, worker, queue, ["t"], limit, marks)
    finally:
        await conn.close()


def claim(
    dsn: str,
    limit: int = 100,
    queue: str = "q",
    worker: str | None = None,
    marks: repository.ReadyMarks | None = None,
) -> list:
    return asyncio.run(_claim(dsn, worker or str(uuid.uuid4()), limit, queue, marks))


@pytest.fixture(params=["full passes", "positions"])
def marks(request: pytest.FixtureRequest) -> repository.ReadyMarks | None:
    """How a test's claims read the ready indexes: each from the front (no positions), or as a worker's while
    vacuum is held back (docs/protocol.md, "Where a claim starts reading"): its first claim is a full pass, the
    next ones read from its positions. The limits and the turns must not tell the difference."""
    return NeverFull() if request.param == "positions" else None


def running_by_group(conn: db.Connection, queue: str = "q") -> dict[str | None, int]:
    rows = conn.rows(
        "SELECT group_name, count(*) FROM sched_jobs_all WHERE state = 'running' AND queue = %s GROUP BY 1", (queue,)
    )
    return dict(rows)


def test_a_claim_takes_at_most_the_free_slots_of_the_queue_and_of_each_group(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None
) -> None:
    ids = add(conn, ["a", "a", "a", "b", "b", "c", None])
    repository.set_queue_concurrency(conn, "q", max_running=4, group_concurrency=2)
    first = claim(dsn, marks=marks)
    # Turns between groups (docs/protocol.md, "Fair sharing"): the first jobs of a, b and c, then a's second;
    # then the queue is at 4.
    assert sorted(j.id for j in first) == [ids[0], ids[1], ids[3], ids[5]]
    assert claim(dsn, marks=marks) == []
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE id = %s", (ids[0],))
    # One free slot: the turn after c comes round to a (b has a job too, but its turn comes after a's).
    assert [j.id for j in claim(dsn, marks=marks)] == [ids[2]]
    repository.set_queue_concurrency(conn, "q", max_running=None, set_group_concurrency=False)
    # Without max_running: b's second job and the job without a group; a and b are then at their limit of 2.
    assert sorted(j.id for j in claim(dsn, marks=marks)) == [ids[4], ids[6]]
    assert claim(dsn, marks=marks) == []
    assert running_by_group(conn) == {"a": 2, "b": 2, "c": 1, None: 1}


def test_every_way_a_run_ends_gives_its_slot_back(dsn: str, conn: db.Connection) -> None:
    add(conn, ["g"] * 8)
    repository.set_queue_concurrency(conn, "q", group_concurrency=1)
    worker = str(uuid.uuid4())

    async def main() -> list[str]:
        c = await db.connect_async(dsn)
        await repository.register_worker(c, worker, "h", 1, ["q"], ["t"], 10, stale_after_s=30.0, timeout_grace_s=10.0)
        ended = []
        endings = [
            OutcomeKind.SUCCEEDED,
            OutcomeKind.FAILED,
            OutcomeKind.CANCELLED,
            OutcomeKind.RELEASED,
            "reaped",
            "retried failure",
        ]
        for ending in endings:
            [job] = await repository.claim_jobs(c, worker, "q", ["t"], 10)
            # The group is at its limit until this run ends.
            assert await repository.claim_jobs(c, worker, "q", ["t"], 10) == []
            if ending == "reaped":
                await c.run(
                    "UPDATE sched_jobs SET started_at = now() - interval '1 day' WHERE id = %(id)s", {"id": job.id}
                )
                assert job.id in (await repository.reap_stale(c, wait=True)).requeued
            elif ending == "retried failure":
                await repository.record_outcomes(
                    c, worker, [Outcome(job.id, job.lease, OutcomeKind.FAILED, error="x", retry_after_s=0.0)]
                )
            else:
                retryable = ending != OutcomeKind.FAILED
                await repository.record_outcomes(
                    c, worker, [Outcome(job.id, job.lease, ending, error="x", retryable=retryable)]
                )
            row = await c.row("SELECT state::text FROM sched_jobs_all WHERE id = %(id)s", {"id": job.id})
            ended.append(row[0])
        await c.close()
        return ended

    states = asyncio.run(main())
    assert states == ["succeeded", "failed", "cancelled", "queued", "queued", "queued"]
    assert running_by_group(conn) == {}


def test_concurrent_claimers_never_pass_the_limits(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None
) -> None:
    groups = [f"g{i % 4}" for i in range(1200)]
    add(conn, groups)
    repository.set_queue_concurrency(conn, "q", max_running=7, group_concurrency=2)
    stop = threading.Event()
    seen = {"total": 0, "group": 0, "samples": 0}
    errors: list[BaseException] = []

    def watch() -> None:
        # Each sample is one statement: one consistent view of the committed running jobs.
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                total, top = c.execute(
                    "SELECT coalesce(sum(n), 0), coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM sched_jobs_all"
                    " WHERE state = 'running' AND queue = 'q' GROUP BY group_name) g"
                ).fetchone()  # type: ignore[misc]
                seen["total"] = max(seen["total"], total)
                seen["group"] = max(seen["group"], top)
                seen["samples"] += 1

    def work(seed: int) -> None:
        async def main() -> None:
            rng = random.Random(seed)
            c = await db.connect_async(dsn)
            worker = str(uuid.uuid4())
            await repository.register_worker(
                c, worker, "h", seed, ["q"], ["t"], 10, stale_after_s=60, timeout_grace_s=10
            )
            idle = 0
            own = None if marks is None else NeverFull()  # each worker its own positions
            while idle < 20:
                jobs = await repository.claim_jobs(c, worker, "q", ["t"], rng.randint(1, 4), own)
                idle = 0 if jobs else idle + 1
                await asyncio.sleep(rng.random() * 0.003)
                if jobs:
                    outcomes = [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs]
                    await repository.record_outcomes(c, worker, outcomes)
            await c.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    watcher.join()
    assert not errors, errors
    assert conn.row("SELECT count(*) FROM sched_jobs_all WHERE state = 'succeeded'") == (1200,)
    assert seen["samples"] > 10
    assert seen["total"] <= 7 and seen["group"] <= 2, seen
    # The limits were reached, so the test would have seen them passed.
    assert seen["group"] == 2, seen


def test_a_spread_head_is_taken_as_it_is(dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None) -> None:
    # docs/protocol.md, "Fair sharing": the first jobs in claim order are each the first of a different group,
    # none at its limit, so the claim takes them without turns (the cursor stays); a group's second job among
    # them sends the claim to the turns, which start after the cursor.
    ids = add(conn, ["d", "c", "b", "a", None, "a", "b"])
    repository.set_queue_concurrency(conn, "q", group_concurrency=2)
    assert sorted(j.id for j in claim(dsn, limit=5, marks=marks)) == ids[:5]
    assert conn.row("SELECT rr_group FROM sched_queues WHERE queue = 'q'") == (None,)
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
    add(conn, ["a", "e"])
    # Ready now: a, b (the second jobs of their groups, at the head), then a again and e: not spread.
    second = claim(dsn, limit=3, marks=marks)
    assert sorted(j.id for j in second) == sorted([ids[5], ids[6], ids[6] + 2])
    assert conn.row("SELECT rr_group FROM sched_queues WHERE queue = 'q'") == ("e",)


@pytest.mark.parametrize("cap", ["group_concurrency", "group_rate"])
def test_a_job_behind_rows_over_their_cap_is_not_passed_over_for_a_lower_priority(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None, cap: str
) -> None:
    # docs/protocol.md, "Fair sharing": the claim of 5 reads five jobs of x (priority 10) at the head, of which x
    # may start 2. The jobs without a group (priority 5) lie after the head, where only the head finds them; the
    # groups y (priority 0) are found by the turns. Taking y's jobs in the free places would pass over the jobs
    # without a group: the claim takes x's 2, and the next one, with x at its cap, takes the rest in order.
    x = [e.id for e in repository.enqueue_many(conn, [NewJob(task="t", queue="q", group="x", priority=10)] * 10)]
    plain = [e.id for e in repository.enqueue_many(conn, [NewJob(task="t", queue="q", priority=5)] * 3)]
    add(conn, [f"y{i}" for i in range(5)])
    if cap == "group_concurrency":
        repository.set_queue_concurrency(conn, "q", group_concurrency=2)
    else:
        repository.set_queue_group_rate(conn, "q", 0.001, 2)
    assert sorted(j.id for j in claim(dsn, limit=5, marks=marks)) == x[:2]
    second = [j.id for j in claim(dsn, limit=5, marks=marks)]
    assert sorted(second[:3]) == plain and len(second) == 5


def test_groups_take_turns_whatever_their_backlog(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None
) -> None:
    # docs/protocol.md, "Fair sharing": a group with 500 queued jobs, added first, and five groups of 5 behind it.
    add(conn, ["big"] * 500 + [f"small{i}" for i in range(5) for _ in range(5)])
    repository.set_queue_concurrency(conn, "q", group_concurrency=1000)
    worker = str(uuid.uuid4())
    big_before_last_small = 0
    small_left = 25
    while small_left:
        jobs = claim(dsn, limit=3, worker=worker, marks=marks)
        assert jobs, "a claim took nothing while jobs were ready"
        groups = [
            g for (g,) in conn.rows("SELECT group_name FROM sched_jobs_all WHERE id = ANY(%s)", ([j.id for j in jobs],))
        ]
        small_left -= sum(g != "big" for g in groups)
        big_before_last_small += groups.count("big")
        conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
    # Six groups take turns three jobs at a time: the big group has one turn in six.
    assert big_before_last_small <= 6, big_before_last_small
    # Work-conserving: once the small groups are done, the big group takes every job asked for.
    assert len(claim(dsn, limit=3, worker=worker, marks=marks)) == 3


def test_status_says_which_limit_holds_a_job_back(dsn: str, conn: db.Connection) -> None:
    from pgsched.why import describe_job

    ids = add(conn, ["tenant:42", "tenant:42", "tenant:7", "tenant:7"])
    repository.set_queue_concurrency(conn, "q", group_concurrency=1)
    claim(dsn, limit=1)
    # Turns: tenant:42 first (its name comes first), then tenant:7 is still free.
    assert describe_job(conn, ids[1])["why"] == "group tenant:42 is at its limit of 1 running job"
    assert not describe_job(conn, ids[2])["why"].startswith("group")
    repository.set_queue_concurrency(conn, "q", max_running=1, set_group_concurrency=False)
    assert describe_job(conn, ids[2])["why"] == "queue q is at its max of 1 running"


def test_metrics_count_the_jobs_each_limit_holds_back(dsn: str, conn: db.Connection) -> None:
    from pgsched.worker.metrics import WorkerMetrics

    add(conn, ["a"] * 4 + ["b"] * 2 + [None] * 3)
    add(conn, [None] * 2, queue="plain")
    repository.set_queue_concurrency(conn, "q", group_concurrency=2)
    claim(dsn, limit=2)  # a's first job and b's: no group is at its limit yet

    async def scrape() -> tuple[list, bytes]:
        c = await db.connect_async(dsn)
        try:
            counts = await repository.held_back(c, ["q", "plain"])
            metrics = WorkerMetrics()
            await metrics.refresh(c, ["q", "plain"])
            return counts, metrics.render()
        finally:
            await c.close()

    counts, _ = asyncio.run(scrape())
    assert counts == [("q", "max_running", 0), ("q", "group_concurrency", 0), ("q", "group_rate", 0)]
    claim(dsn, limit=2)  # a's and b's second jobs: both groups at their limit, a's 2 other jobs held back
    repository.set_queue_concurrency(conn, "q", max_running=4, set_group_concurrency=False)
    counts, text = asyncio.run(scrape())
    # At its max of 4 running, the queue holds back all 5 ready jobs; a's limit holds back 2 of them.
    assert counts == [("q", "max_running", 5), ("q", "group_concurrency", 2), ("q", "group_rate", 0)]
    assert b'sched_queue_held_back_jobs{control="group_concurrency",queue="q"} 2.0' in text
    assert b'queue="plain"' not in text.split(b"sched_queue_held_back_jobs", 1)[1].split(b"# HELP", 1)[0]


def test_limits_combine_with_pause_and_the_rate_limit(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None
) -> None:
    add(conn, ["a"] * 3 + ["b"] * 3 + ["c"] * 3)
    repository.set_queue_concurrency(conn, "q", group_concurrency=2)
    repository.set_queue_paused(conn, "q", True)
    assert claim(dsn, marks=marks) == []
    repository.set_queue_paused(conn, "q", False)
    repository.set_queue_rate(conn, "q", 0.001, 3)
    # The bucket holds 3 tokens: the claim takes 3, within each group's limit, and charges exactly 3.
    assert len(claim(dsn, marks=marks)) == 3
    assert claim(dsn, marks=marks) == []
    tokens = conn.row("SELECT tokens FROM sched_queues WHERE queue = 'q'")[0]  # type: ignore[index]
    assert tokens < 1


def test_clearing_the_limits_returns_the_queue_to_the_plain_claim(dsn: str, conn: db.Connection) -> None:
    add(conn, ["a"] * 5)
    repository.set_queue_concurrency(conn, "q", max_running=1, group_concurrency=1)
    assert len(claim(dsn)) == 1
    repository.set_queue_concurrency(conn, "q", max_running=None, group_concurrency=None)
    assert conn.rows("SELECT * FROM sched_queues") == []
    assert len(claim(dsn)) == 4


def _claim_plan(dsn: str, queue: str) -> str:
    params = repository.claim_params(queue, ["t"], 10, str(uuid.uuid4()))
    with psycopg.connect(dsn) as raw:
        plan = "\n".join(r[0] for r in raw.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query("JobClaim"), params))
        raw.rollback()
    return plan


def _nested_plans(dsn: str, params: dict) -> tuple[list, str]:
    """JobClaim's rows (rolled back) and the plans of every statement it ran, those inside functions too."""
    plans: list[str] = []
    with psycopg.connect(dsn) as raw:
        raw.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_level = 'notice'",
        ):
            raw.execute(setting)
        claimed = raw.execute(query("JobClaim"), params).fetchall()
        raw.rollback()
    return claimed, "\n".join(plans)


def test_the_claim_of_a_queue_without_limits_never_runs_the_limited_claim(dsn: str, conn: db.Connection) -> None:
    # Jobs without groups in q; grouped jobs elsewhere, in a limited queue and in a queue that turned fair
    # sharing off: q's claim stays the plain one, and so does the unfair queue's.
    add(conn, [None] * 5000)
    add(conn, ["g"] * 50, queue="elsewhere")
    add(conn, ["g"] * 50, queue="unfair")
    repository.set_queue_concurrency(conn, "elsewhere", group_concurrency=1)
    repository.set_queue_fair(conn, "unfair", False)
    conn.run("ANALYZE sched_jobs")
    for queue in ("q", "unfair"):
        plan = _claim_plan(dsn, queue)
        assert "Index Scan using sched_jobs_ready on sched_jobs" in plan
        assert "Seq Scan on sched_jobs" not in plan, plan
        limited = [line for line in plan.splitlines() if "Function Scan on sched_claim_limited" in line]
        assert len(limited) == 1 and "never executed" in limited[0], plan
    # The probe for grouped jobs (in sched_has_grouped_jobs) reads the index of grouped ready jobs, which has no
    # entry of q.
    _, plans = _nested_plans(dsn, repository.claim_params("q", ["t"], 10, str(uuid.uuid4())))
    probe = plans[plans.index("ORDER BY r.group_name LIMIT 1") :]
    assert "Index Only Scan using sched_jobs_ready_group on sched_jobs" in probe.split("Query Text")[0], plans


def test_a_queue_whose_jobs_have_groups_shares_fairly_by_default(
    dsn: str, conn: db.Connection, marks: repository.ReadyMarks | None
) -> None:
    # docs/protocol.md, "Fair sharing": no limit set, yet a group with 30 jobs added first takes its turn
    # with three groups of 2 behind it; with fair sharing off, the claim takes jobs in claim order.
    ids = add(conn, ["big"] * 30 + ["a", "a", "b", "b", "c", "c"])
    first = claim(dsn, limit=4, marks=marks)
    assert sorted(j.id for j in first) == [ids[0], ids[30], ids[32], ids[34]]
    assert conn.row("SELECT rr_group FROM sched_queues WHERE queue = 'q'") == ("c",)
    repository.set_queue_fair(conn, "q", False)
    assert sorted(j.id for j in claim(dsn, limit=4, marks=marks)) == ids[1:5]
    repository.set_queue_fair(conn, "q", True)
    assert conn.rows("SELECT * FROM sched_queues") == []


@pytest.mark.slow
def test_the_limited_claim_reads_the_ready_index_with_10000_groups(dsn: str, conn: db.Connection) -> None:
    # 300,000 queued jobs in 10,000 groups, 50 of them at their limit: the limited claim reads the indexes of
    # ready jobs (a few rows per job it takes, no sort of the ready set, no scan of the table), whatever the
    # backlog or the number of groups.
    conn.run(
        "INSERT INTO sched_jobs (queue, task, group_name) SELECT 'q', 't', 'g' || (i % 10000) "
        "FROM generate_series(1, 300000) i"
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, group_name, state, attempt, started_at, worker_id, lease) "
        "SELECT 'q', 't', 'g' || (i % 50), 'running', 1, now(), gen_random_uuid(), i FROM generate_series(1, 50) i"
    )
    # A group whose backlog leads the queue in claim order: the head is not spread, so the turns decide.
    conn.run(
        "INSERT INTO sched_jobs (queue, task, group_name, run_at) "
        "SELECT 'q', 't', 'big', now() - interval '1 hour' FROM generate_series(1, 100)"
    )
    conn.run("VACUUM ANALYZE sched_jobs")
    repository.set_queue_concurrency(conn, "q", group_concurrency=1)
    claimed, everything = _nested_plans(dsn, repository.claim_params("q", ["t"], 50, str(uuid.uuid4())))
    assert len(claimed) == 50
    # Job i (up to 300,000) is in group g(i % 10000); groups g0 to g49 are at their limit; big takes one turn.
    assert all(r[0] % 10000 >= 50 for r in claimed if r[0] <= 300_000)
    assert sum(r[0] > 300_050 for r in claimed) == 1
    assert "Index Scan using sched_jobs_ready on sched_jobs" in everything
    # The turns between groups: a skip scan and the heads of the groups, both on the index of grouped jobs.
    ran = [line for line in everything.splitlines() if "never executed" not in line]
    assert any("Index Only Scan using sched_jobs_ready_group on sched_jobs" in line for line in ran)
    assert any("Index Scan using sched_jobs_ready_group on sched_jobs" in line for line in ran)
    assert "Seq Scan on sched_jobs" not in everything
    assert "Bitmap Heap Scan on sched_jobs" not in everything
