"""Group rates against a real PostgreSQL (docs/protocol.md, "Group rates"): each group's token bucket caps the
claims of that group, whatever the number of claimers on their own connections; a group whose bucket is empty
is skipped and the others' jobs are taken; buckets of idle groups leave no rows behind; and the rates combine
with the other controls."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from support.marks import NeverFull

from pgsched import db, repository
from pgsched.admin import QueueLimits, set_queue_limits
from pgsched.errors import InvalidInput
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query

SQL = Path(__file__).parents[2] / "sql"
# The flow-controlled claim's header as the migrations write it (the four-argument wrapper has another).
CLAIM_HEADER = "FUNCTION sched_claim_limited(\n    p_queue"


def current_claim_source() -> str:
    """The flow-controlled claim as the last migration that (re)defines it wrote it, from CREATE to its $$;."""
    source = next(
        text for path in sorted(SQL.glob("*.sql"), reverse=True) if CLAIM_HEADER in (text := path.read_text())
    )
    begin = source.rindex("CREATE", 0, source.index(CLAIM_HEADER))
    return source[begin : source.index("$$;", begin) + 3]


def add(conn: db.Connection, groups: list[str | None], queue: str = "q") -> list[int]:
    return [e.id for e in repository.enqueue_many(conn, [NewJob(task="t", queue=queue, group=g) for g in groups])]


async def _claim(dsn: str, limit: int, queue: str) -> list:
    conn = await db.connect_async(dsn)
    try:
        return await repository.claim_jobs(conn, str(uuid.uuid4()), queue, ["t"], limit)
    finally:
        await conn.close()


def claim(dsn: str, limit: int = 100, queue: str = "q") -> list:
    return asyncio.run(_claim(dsn, limit, queue))


def groups_of(conn: db.Connection, jobs: list) -> collections.Counter:
    rows = conn.rows("SELECT group_name FROM sched_jobs_all WHERE id = ANY(%s)", ([j.id for j in jobs],))
    return collections.Counter(g for (g,) in rows)


def test_an_empty_bucket_skips_its_group_and_other_groups_are_taken(dsn: str, conn: db.Connection) -> None:
    add(conn, ["a"] * 5 + ["b"] * 5 + [None] * 2)
    # So slow that nothing refills during the test: each group may start 2 jobs.
    repository.set_queue_group_rate(conn, "q", 0.001, 2)
    assert groups_of(conn, claim(dsn)) == {"a": 2, "b": 2, None: 2}
    assert claim(dsn) == []
    # Work-conserving: a new group's jobs are taken while a and b wait for tokens.
    add(conn, ["c"] * 3)
    assert groups_of(conn, claim(dsn)) == {"c": 2}
    assert conn.row("SELECT count(*) FROM sched_group_buckets WHERE queue = 'q'") == (3,)
    # A new rate starts every bucket full.
    repository.set_queue_group_rate(conn, "q", 0.001, 1)
    assert conn.rows("SELECT * FROM sched_group_buckets") == []
    assert groups_of(conn, claim(dsn)) == {"a": 1, "b": 1, "c": 1}
    repository.set_queue_group_rate(conn, "q", None)
    assert conn.rows("SELECT * FROM sched_queues WHERE group_rate IS NOT NULL") == []
    assert len(claim(dsn)) == 4


def test_full_buckets_leave_no_rows(dsn: str, conn: db.Connection) -> None:
    # 1,000 groups claimed once each at 1,000 jobs a second: a millisecond later every bucket is full again. A
    # claim sweeps their rows at most once a second per queue (docs/protocol.md, "Group rates"); until then they
    # are full buckets, the same as none.
    add(conn, [f"g{i}" for i in range(1000)] + ["late", "later"])
    repository.set_queue_group_rate(conn, "q", 1000, 1)
    assert len(claim(dsn, limit=1000)) == 1000
    assert conn.row("SELECT count(*) FROM sched_group_buckets") == (1000,)
    time.sleep(0.01)
    assert len(claim(dsn, limit=1)) == 1
    assert conn.row("SELECT count(*) FROM sched_group_buckets") == (1001,)
    # A second later (the last sweep moved back by one), the next claim sweeps every full one.
    conn.run("UPDATE sched_queues SET group_swept_at = group_swept_at - interval '1 second'")
    assert len(claim(dsn, limit=1)) == 1
    assert conn.row("SELECT count(*) FROM sched_group_buckets") == (1,)


def test_a_charge_replaces_the_groups_row_and_reads_no_earlier_one(dsn: str, conn: db.Connection) -> None:
    # A group charged again has one row not yet full: the new charge's, from the later of its last full_at
    # and now. Earlier charges' rows, in the past, take no part (docs/protocol.md, "Group rates").
    add(conn, ["a"] * 6)
    repository.set_queue_group_rate(conn, "q", 0.001, 2)
    assert len(claim(dsn)) == 2
    (first,) = conn.row("SELECT full_at FROM sched_group_buckets WHERE group_name = 'a'")
    # A stale row in the past (as a sweep would leave for a second) changes nothing.
    conn.run("INSERT INTO sched_group_buckets (queue, group_name, full_at) VALUES ('q', 'a', now() - interval '1 h')")
    conn.run("UPDATE sched_group_buckets SET full_at = full_at - interval '1000 seconds' WHERE full_at > now()")
    # One token has come back: one job, charged 1,000 s on from the bucket's moment.
    assert len(claim(dsn)) == 1
    rows = conn.rows("SELECT full_at FROM sched_group_buckets WHERE group_name = 'a' AND full_at > now()")
    assert len(rows) == 1 and abs((rows[0][0] - first).total_seconds()) < 1, (rows, first)


def test_rates_combine_with_group_concurrency_max_running_pause_and_the_queue_rate(
    dsn: str, conn: db.Connection
) -> None:
    add(conn, ["a"] * 6 + ["b"] * 6 + ["c"] * 6)
    set_queue_limits(conn, "q", QueueLimits.parse(group_rate="1/h", group_burst=3, group_concurrency=2))
    # The tighter of each group's slots (2) and its tokens (3).
    first = claim(dsn)
    assert groups_of(conn, first) == {"a": 2, "b": 2, "c": 2}
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
    # Slots are free again; each group has 1 token left.
    assert groups_of(conn, claim(dsn)) == {"a": 1, "b": 1, "c": 1}
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
    assert claim(dsn) == []
    set_queue_limits(conn, "q", QueueLimits.parse(group_rate="1/h", group_burst=5))
    repository.set_queue_paused(conn, "q", True)
    assert claim(dsn) == []
    repository.set_queue_paused(conn, "q", False)
    set_queue_limits(conn, "q", QueueLimits.parse(rate="1/h", burst=4, max_running=3))
    # The queue's bucket (4) and max_running (3) both bound the claim; groups take turns.
    assert groups_of(conn, claim(dsn)) == {"a": 1, "b": 1, "c": 1}
    assert claim(dsn) == []
    conn.run("UPDATE sched_jobs SET state = 'succeeded', finished_at = now() WHERE state = 'running'")
    assert len(claim(dsn)) == 1
    tokens = conn.row("SELECT tokens FROM sched_queues WHERE queue = 'q'")[0]  # type: ignore[index]
    assert tokens < 1


def test_status_and_metrics_name_the_group_rate(dsn: str, conn: db.Connection) -> None:
    from pgsched.why import describe_job

    ids = add(conn, ["tenant:42"] * 3 + ["tenant:7"])
    repository.set_queue_group_rate(conn, "q", 10, 2)
    assert len(claim(dsn, limit=4)) == 3
    why = describe_job(conn, ids[2])["why"]
    assert why.startswith("group tenant:42 rate 10/s: next token in "), why

    async def held() -> list:
        c = await db.connect_async(dsn)
        try:
            return await repository.held_back(c, ["q"])
        finally:
            await c.close()

    assert ("q", "group_rate", 1) in asyncio.run(held())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_rate": "fast"}, "--group-rate: invalid rate 'fast'"),
        ({"group_rate": "-1/s"}, "--group-rate: invalid rate '-1/s'"),
        ({"group_burst": 3}, "--group-burst needs --group-rate"),
        ({"group_rate": "5/s", "group_burst": 0}, "invalid --group-burst 0"),
        ({"clear": True, "fair": False}, "--clear cannot be combined"),
    ],
)
def test_bad_group_rates_are_refused(options: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        QueueLimits.parse(**options)


def claim_concurrently(dsn: str, conn: db.Connection, seconds: float, positions: bool = False) -> None:
    """Six claimers on their own connections claim and finish jobs of q as fast as they can for ``seconds``
    (with ``positions``, each reads from its own positions as while vacuum is held back)."""
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def work(seed: int) -> None:
        async def main() -> None:
            rng = random.Random(seed)
            c = await db.connect_async(dsn)
            worker = str(uuid.uuid4())
            await repository.register_worker(
                c, worker, "h", seed, ["q"], ["t"], 10, stale_after_s=60, timeout_grace_s=10
            )
            marks = NeverFull() if positions else None
            while time.monotonic() < deadline:
                jobs = await repository.claim_jobs(c, worker, "q", ["t"], rng.randint(1, 6), marks)
                if jobs:
                    await repository.record_outcomes(
                        c, worker, [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs]
                    )
                await asyncio.sleep(rng.random() * 0.001)
            await c.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def excess_claims(conn: db.Connection, rate: float, burst: int) -> dict[str, int]:
    """For each group, how far its busiest window of claims passed burst + rate x window (0: never), from the
    claim moments the database recorded (started_at: when the claim read and charged the buckets)."""
    worst: dict[str, int] = {}
    rows = conn.rows(
        "SELECT group_name, array_agg(extract(epoch FROM started_at)::float8 ORDER BY started_at) FROM sched_jobs_all "
        "WHERE started_at IS NOT NULL GROUP BY 1"
    )
    for group, times in rows:
        over = 0
        for i in range(len(times)):
            for j in range(i, len(times)):
                allowed = burst + rate * (times[j] - times[i]) + 1e-6 * rate
                over = max(over, (j - i + 1) - int(allowed))
        worst[group] = over
    return worst


@pytest.mark.parametrize("positions", [False, True], ids=["full passes", "positions"])
def test_concurrent_claimers_never_pass_a_group_bucket(dsn: str, conn: db.Connection, positions: bool) -> None:
    add(conn, [f"g{i % 3}" for i in range(600)])
    rate, burst = 40.0, 4
    repository.set_queue_group_rate(conn, "q", rate, burst)
    claim_concurrently(dsn, conn, 1.5, positions)
    taken = dict(conn.rows("SELECT group_name, count(*) FROM sched_jobs_all WHERE state = 'succeeded' GROUP BY 1"))
    # The buckets were the limit: each group took about burst + 1.5 s x rate, far fewer than its 200 jobs.
    assert all(10 < n < 200 for n in taken.values()), taken
    assert excess_claims(conn, rate, burst) == {"g0": 0, "g1": 0, "g2": 0}


def test_the_check_catches_a_claim_that_does_not_charge_the_buckets(dsn: str, conn: db.Connection) -> None:
    # The same run against a claim whose charge of the group buckets was taken out: the check above must see
    # groups pass their buckets, or it could not fail.
    # It runs as long as that test: a shorter run on a loaded machine left a group with too few claims to pass.
    function = current_claim_source()
    start, end = function.index("    -- Each group's bucket pays"), function.index("    -- The head's rows")
    function = function[:start] + function[end:]
    conn.run("CREATE OR REPLACE" + function[function.index(" FUNCTION") :])
    add(conn, [f"g{i % 3}" for i in range(600)])
    repository.set_queue_group_rate(conn, "q", 40.0, 4)
    claim_concurrently(dsn, conn, 1.5)
    assert all(over > 0 for over in excess_claims(conn, 40.0, 4).values())


def test_claimers_waiting_for_the_queue_see_each_others_charges(dsn: str, conn: db.Connection) -> None:
    # Two claims start while an operator holds the queue's row: each must wait for the row, read the group's
    # bucket after the other charged it, and together take no more than the bucket's 3 tokens. They claim
    # different tasks of the group, so neither finds its jobs locked by the other: only the bucket holds them.
    repository.enqueue_many(conn, [NewJob(task=task, queue="q", group="a") for task in ("t", "u") for _ in range(5)])
    repository.set_queue_group_rate(conn, "q", 0.001, 3)
    taken: list[int] = []

    def claim_on_own_connection(task: str) -> None:
        params = repository.claim_params("q", [task], 10, str(uuid.uuid4()))
        with psycopg.connect(dsn, autocommit=True) as c:
            taken.append(len(c.execute(query("JobClaim"), params).fetchall()))

    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as watcher:
        holder.execute("SELECT 1 FROM sched_queues WHERE queue = 'q' FOR UPDATE")
        claimers = [threading.Thread(target=claim_on_own_connection, args=(task,)) for task in ("t", "u")]
        for t in claimers:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Autocommit: each look is a transaction of its own, so it sees the server's activity anew.
            (waiting,) = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()  # type: ignore[misc]
            if waiting == 2:
                break
            time.sleep(0.01)
        assert waiting == 2, "the claims did not wait for the queue's row"
        holder.commit()
    for t in claimers:
        t.join(timeout=30)
    assert sorted(taken) == [0, 3]
