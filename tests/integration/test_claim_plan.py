"""The hot queries keep their plans on a table full of history and future jobs: the claim reads the two
partial indexes and the primary key, never the whole table, and the outcome batch stays on the primary key."""

from __future__ import annotations

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
