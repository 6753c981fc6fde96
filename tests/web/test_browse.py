"""Keyset pages of a queue's jobs (pgsched/repository/browse.py): paging through any filter shows every
matching job exactly once, in its index's order, however small the page or the walk budget."""

from __future__ import annotations

import pytest

from pgsched import db, repository
from pgsched.errors import InvalidInput

EXPECTED = {
    "all": ("TRUE", "id DESC"),
    "queued": ("state = 'queued' AND NOT deferred", "priority DESC, run_at, id"),
    "scheduled": ("state = 'queued' AND deferred", "run_at, id"),
    "running": ("state = 'running'", "id DESC"),
    "waiting": ("state = 'waiting'", "id DESC"),
    "succeeded": ("state = 'succeeded'", "finished_at DESC, id DESC"),
    "failed": ("state = 'failed'", "finished_at DESC, id DESC"),
    "cancelled": ("state = 'cancelled'", "finished_at DESC, id DESC"),
}


@pytest.fixture
def mixed(conn: db.Connection) -> db.Connection:
    """Jobs of every state on queue q and on queue n, with equal priorities, run_at and finished_at in runs
    (a batch of outcomes shares one finished_at), three tasks, and some dedupe keys."""
    for queue in ("q", "n"):
        conn.run(
            "INSERT INTO sched_jobs (queue, task, priority, run_at, deferred, dedupe_key) "
            "SELECT %(q)s, 't' || (g %% 3), g %% 3 - 1, now() - interval '1 minute' * (g %% 4), false, "
            "CASE WHEN g %% 10 = 0 THEN 'k' || g END FROM generate_series(1, 90) g",
            {"q": queue},
        )
        conn.run(
            "INSERT INTO sched_jobs (queue, task, run_at, deferred) "
            "SELECT %(q)s, 't' || (g %% 3), now() + interval '1 minute' * (g %% 5), true FROM generate_series(1, 40) g",
            {"q": queue},
        )
        conn.run(
            "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, worker_id) "
            "SELECT %(q)s, 't' || (g / 3 %% 3), "
            "(ARRAY['succeeded', 'failed', 'cancelled'])[1 + g %% 3]::sched_job_state, 1, now(), "
            "now() - interval '1 second' * (g %% 6), gen_random_uuid() FROM generate_series(1, 150) g",
            {"q": queue},
        )
        conn.run(
            "INSERT INTO sched_jobs (queue, task, state, started_at, worker_id, lease) "
            "SELECT %(q)s, 't' || (g %% 3), 'running', now(), gen_random_uuid(), g FROM generate_series(1, 12) g",
            {"q": queue},
        )
        waiting = conn.rows(
            "INSERT INTO sched_jobs (queue, task, state, pending_deps) "
            "SELECT %(q)s, 't' || (g %% 3), 'waiting', 1 FROM generate_series(1, 20) g RETURNING id",
            {"q": queue},
        )
        ready = conn.row("SELECT min(id) FROM sched_jobs_all WHERE queue = %(q)s AND state = 'queued'", {"q": queue})
        conn.run(
            "INSERT INTO sched_job_deps (job_id, depends_on) SELECT unnest(%s::bigint[]), %s",
            ([r[0] for r in waiting], ready[0]),  # type: ignore[index]
        )
    # Three jobs in four carry one of three groups, whatever their state and task.
    conn.run("UPDATE sched_jobs SET group_name = 'g' || (id / 4 % 3) WHERE id % 4 <> 3")
    return conn


def expected(conn: db.Connection, state: str, task: str | None, group: str | None = None) -> list[int]:
    where, order = EXPECTED[state]
    return [
        r[0]
        for r in conn.rows(
            f"SELECT id FROM sched_jobs_all WHERE queue = 'q' AND {where} "
            "AND (%(task)s::text IS NULL OR task = %(task)s) "
            f"AND (%(group)s::text IS NULL OR group_name = %(group)s) ORDER BY {order}",
            {"task": task, "group": group},
        )
    ]


def page_through(
    conn: db.Connection, state: str, task: str | None, limit: int, walk: int, group: str | None = None
) -> tuple[list[int], int]:
    shown: list[int] = []
    cursor, pages = None, 0
    while True:
        page = repository.browse_jobs(
            conn, "q", state=state, task=task, group=group, cursor=cursor, limit=limit, walk=walk
        )
        assert len(page.jobs) <= limit
        shown += [job["id"] for job in page.jobs]
        pages += 1
        assert pages < 500, "paging does not end"
        if page.next_cursor is None:
            return shown, pages
        cursor = page.next_cursor


@pytest.mark.parametrize("state", list(EXPECTED))
@pytest.mark.parametrize(("task", "group"), [(None, None), ("t1", None), (None, "g1"), ("t2", "g0")])
def test_paging_shows_every_match_once_in_index_order(
    mixed: db.Connection, state: str, task: str | None, group: str | None
) -> None:
    want = expected(mixed, state, task, group)
    assert want, "the data set must hold jobs of every state, task and group"
    for limit, walk in ((7, 1000), (5, 11), (50, 5000)):
        shown, _ = page_through(mixed, state, task, limit, walk, group)
        assert shown == want, (limit, walk)


def test_a_filter_no_index_serves_stops_at_the_walk_budget(mixed: db.Connection) -> None:
    # One job in 30 of the walk matches: a page examines at most `walk` jobs, says so, and the next one goes on.
    mixed.run("UPDATE sched_jobs SET task = 'rare' WHERE queue = 'q' AND state = 'succeeded' AND id % 2 = 0")
    page = repository.browse_jobs(mixed, "q", state="succeeded", task="rare", limit=50, walk=40)
    assert page.exhausted and page.next_cursor is not None
    assert 0 < len(page.jobs) < 50
    shown, pages = page_through(mixed, "succeeded", "rare", 50, 40)
    assert shown == expected(mixed, "succeeded", "rare")
    assert pages > 1


def test_a_key_finds_its_live_holder_through_the_key_index(mixed: db.Connection) -> None:
    holder = mixed.row("SELECT id FROM sched_jobs_all WHERE queue = 'q' AND dedupe_key = 'k10'")[0]  # type: ignore[index]
    assert [j["id"] for j in repository.browse_jobs(mixed, "q", key="k10").jobs] == [holder]
    assert [j["id"] for j in repository.browse_jobs(mixed, "q", state="queued", key="k10").jobs] == [holder]
    assert repository.browse_jobs(mixed, "q", state="scheduled", key="k10").jobs == []
    assert repository.browse_jobs(mixed, "q", key="k10", task="t2").jobs == []
    assert repository.browse_jobs(mixed, "n", key="nope").jobs == []


def test_bad_cursors_and_states_are_refused(conn: db.Connection) -> None:
    with pytest.raises(InvalidInput, match="invalid page cursor 'x'"):
        repository.browse_jobs(conn, "q", cursor="x")
    with pytest.raises(InvalidInput, match="unknown state 'done'"):
        repository.browse_jobs(conn, "q", state="done")
