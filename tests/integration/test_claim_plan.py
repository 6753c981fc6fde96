"""The hot queries keep their plans on a table full of history and future jobs: the claim reads the two
partial indexes and the primary key, never the whole table, and the outcome batch stays on the primary key."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import sql

from pgsched import db, repository
from pgsched.sqlfiles import query

pytestmark = pytest.mark.slow

HISTORY = 200_000


@pytest.fixture
def crowded(dsn: str, conn: db.Connection) -> str:
    """A table with many finished jobs, many far-future jobs, and a few thousand ready ones."""
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, worker_id) "
        "SELECT 'default', 'sched.noop', 'succeeded', 1, now(), now() - interval '1 day', gen_random_uuid() "
        "FROM generate_series(1, %s)",
        (HISTORY,),
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, run_at, deferred) "
        "SELECT 'default', 'sched.noop', now() + interval '1 day', true FROM generate_series(1, %s)",
        (HISTORY,),
    )
    conn.run("INSERT INTO sched_jobs (queue, task) SELECT 'default', 'sched.noop' FROM generate_series(1, 5000)")
    conn.run("VACUUM ANALYZE sched_jobs")
    return dsn


def _plan(raw: psycopg.Connection, name: str, params: dict) -> str:
    return "\n".join(r[0] for r in raw.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query(name), params))


def test_the_claim_reads_the_partial_indexes_not_the_table(crowded: str) -> None:
    worker = str(uuid.uuid4())
    with psycopg.connect(crowded) as raw:
        plan = _plan(raw, "JobClaim", repository.claim_params("default", ["sched.noop"], 500, worker))
        raw.rollback()
    assert "Index Scan using sched_jobs_ready on sched_jobs" in plan
    assert "Index Scan using sched_jobs_deferred on sched_jobs" in plan
    assert "Seq Scan on sched_jobs" not in plan
    assert "Bitmap Heap Scan on sched_jobs" not in plan


def test_an_outcome_batch_stays_on_the_primary_key(crowded: str) -> None:
    """The statement that sched_finish_succeeded runs, planned as the function plans it (with the arrays' values),
    finds the running rows by the primary key."""
    worker = str(uuid.uuid4())
    with psycopg.connect(crowded) as raw:
        claimed = raw.execute(
            query("JobClaim"), repository.claim_params("default", ["sched.noop"], 500, worker)
        ).fetchall()
        assert len(claimed) == 500
        (source,) = raw.execute("SELECT prosrc FROM pg_proc WHERE proname = 'sched_finish_succeeded'").fetchone()
        raw.execute("PREPARE finish (bigint[], bigint[], uuid, jsonb) AS " + source.split("$q$")[1])
        plan = "\n".join(
            r[0]
            for r in raw.execute(
                sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE finish({}, {}, {}::uuid, NULL)").format(
                    sql.Literal([r[0] for r in claimed]), sql.Literal([r[6] for r in claimed]), sql.Literal(worker)
                )
            )
        )
        raw.rollback()
    assert "Index Scan using sched_jobs_pkey on sched_jobs" in plan, plan
    assert "Seq Scan on sched_jobs" not in plan
    assert "Nested Loop" not in plan
    assert "rows=500" in plan


def _kept_claim_plan(dsn: str, claimer_session: bool) -> str:
    """The plan the server keeps for JobClaim on a session that claimed from an empty queue seven times (after
    five executions it may keep one plan, made without the values), as EXPLAIN EXECUTE shows it."""
    text = query("JobClaim")
    params = repository.claim_params("q", ["t"], 10, str(uuid.uuid4()))
    with psycopg.connect(dsn, autocommit=True) as raw:
        if claimer_session:
            raw.execute(query("SessionClaimerPlans"))
        for _ in range(7):
            raw.execute(text, params, prepare=True)
        ((name,),) = raw.execute(
            "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%WITH limited AS%' AND generic_plans > 0"
        ).fetchall()
        # The statement's parameters are numbered in order of first appearance.
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", text)))
        call = sql.SQL("EXPLAIN EXECUTE {}({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
        )
        return "\n".join(row[0] for row in raw.execute(call).fetchall())


def test_a_claimers_session_keeps_a_plan_that_reads_by_the_indexes(dsn: str, conn: db.Connection) -> None:
    # A plan kept while the table was nearly empty read it sequentially; where nothing invalidates it (no vacuum
    # or analyze: a held horizon, autovacuum off) every claim then read the whole table, dead rows and all.
    # The worker's claim connection turns sequential and bitmap scans off (SessionClaimerPlans).
    kept = _kept_claim_plan(dsn, claimer_session=True)
    assert "Seq Scan on sched_jobs" not in kept, kept
    assert "Index Scan using sched_jobs_ready on sched_jobs" in kept, kept
    # Without it, the same session keeps the plan that reads the table (the test can fail).
    assert "Seq Scan on sched_jobs" in _kept_claim_plan(dsn, claimer_session=False)
