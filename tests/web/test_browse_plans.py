"""The job pages keep their plans on a crowded table: each listing reads the index it names, never the whole
table, and a filter that matches nothing stops after its walk budget instead of reading every row."""

from __future__ import annotations

import re
from datetime import timedelta

import psycopg
import pytest

from pgsched import db
from pgsched.sqlfiles import query

pytestmark = pytest.mark.slow

HISTORY = 200_000
WALK = 5000


@pytest.fixture
def crowded(dsn: str, conn: db.Connection) -> str:
    """Many finished jobs of two queues, many far-future jobs, a few thousand ready ones at three priorities,
    some running and some waiting on dependencies."""
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, worker_id, error) "
        "SELECT CASE WHEN g %% 10 = 0 THEN 'mail' ELSE 'default' END, 'sched.noop', "
        "CASE WHEN g %% 100 = 0 THEN 'failed' ELSE 'succeeded' END::sched_job_state, 1, now(), "
        "now() - interval '1 second' * (g %% 7200), gen_random_uuid(), "
        "CASE WHEN g %% 100 = 0 THEN 'ValueError: boom' END FROM generate_series(1, %s) g",
        (HISTORY,),
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, run_at, deferred) "
        "SELECT 'default', 'sched.noop', now() + interval '1 day', true FROM generate_series(1, %s)",
        (HISTORY,),
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, priority) SELECT 'default', 'sched.noop', g % 3 "
        "FROM generate_series(1, 5000) g"
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, started_at, worker_id, lease) "
        "SELECT 'default', 'sched.noop', 'running', now(), gen_random_uuid(), g FROM generate_series(1, 50) g"
    )
    conn.run(
        "WITH w AS (INSERT INTO sched_jobs (queue, task, state, pending_deps) "
        "SELECT 'default', 'sched.noop', 'waiting', 1 FROM generate_series(1, 500) RETURNING id) "
        "INSERT INTO sched_job_deps (job_id, depends_on) SELECT id, (SELECT max(id) - 600 FROM sched_jobs_all) FROM w"
    )
    conn.run("VACUUM ANALYZE sched_jobs")
    conn.run("VACUUM ANALYZE sched_job_deps")
    return dsn


FIRST = {"after_priority": 1001, "after_at": "infinity", "after_id": 2**63 - 1}
ASCENDING = {"after_priority": 1001, "after_at": "-infinity", "after_id": 0}
LISTINGS = [
    ("BrowseJobsAll", FIRST, "Index Scan Backward using sched_jobs_pkey on sched_jobs"),
    ("BrowseJobsFinished", FIRST, "Index Scan Backward using sched_jobs_finished on sched_jobs"),
    ("BrowseJobsQueued", ASCENDING, "Index Scan using sched_jobs_ready on sched_jobs"),
    ("BrowseJobsRunning", FIRST, "sched_jobs_running"),  # an index scan or a bitmap scan, by the statistics
    ("BrowseJobsScheduled", ASCENDING, "Index Scan using sched_jobs_deferred on sched_jobs"),
    ("BrowseJobsWaiting", FIRST, "Index Only Scan Backward using sched_job_deps_pkey on sched_job_deps"),
]


def _plan(raw: psycopg.Connection, name: str, params: dict) -> str:
    return "\n".join(r[0] for r in raw.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query(name), params))


def _rows_read(plan: str, scan: str) -> int:
    line = next(line for line in plan.splitlines() if scan in line)
    return sum(int(n) for n in re.findall(r"rows=(\d+)", line))


def test_each_listing_reads_its_index_and_at_most_its_walk(crowded: str) -> None:
    with psycopg.connect(crowded) as raw:
        for name, cursor, scan in LISTINGS:
            for task in (None, "no.such.task"):
                params = {
                    "queue": "default",
                    "state": "failed",
                    "task": task,
                    "key": None,
                    "group": None,
                    "walk": WALK,
                    "limit": 50,
                }
                plan = _plan(raw, name, {**params, **cursor})
                assert scan in plan, plan
                assert "Seq Scan on sched_jobs" not in plan, plan
                # The queued listing relies on a plain Append reading its branches in order.
                assert "Parallel" not in plan, plan
                # The finished-jobs index holds finished_at alone: the sort by (finished_at, id) reads on to the
                # end of the last instant it reached, so it may read a few rows past the budget.
                assert _rows_read(plan, scan) <= WALK + 100, plan
                if task is None and name != "BrowseJobsWaiting":
                    # Where most entries match, a page stops long before its budget.
                    assert _rows_read(plan, scan) < 200 or name == "BrowseJobsFinished", plan


def test_the_live_key_lookup_and_the_failure_groups_stay_on_their_indexes(crowded: str) -> None:
    with psycopg.connect(crowded) as raw:
        key = _plan(raw, "BrowseJobGetByKey", {"queue": "default", "key": "order-1"})
        groups = _plan(raw, "BrowseFailureGroups", {"window": timedelta(hours=1), "walk": 20_000, "groups": 50})
    assert "Index Scan using sched_jobs_live_dedupe_key on sched_jobs" in key, key
    assert "Index Scan Backward using sched_jobs_finished on sched_jobs" in groups, groups
    assert "Seq Scan" not in key + groups
    assert _rows_read(groups, "Index Scan Backward using sched_jobs_finished") <= 20_000
