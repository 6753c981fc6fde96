"""A worker held back by flow control comes back when the limit lets it, not a poll interval later
(docs/protocol.md, "When a held-back worker looks again"): when a rate limit that is out of tokens has its next
one, and, while its queue caps running jobs, when its own ended runs are written. Each worker here polls once a
minute, so a queue drained well inside that minute was drained by those wake-ups (before them, each bucket's
token or freed slot waited for the next poll: a rate of 60/s with bursts of 1 drained one job a second)."""

from __future__ import annotations

import itertools
import signal
import time

import pytest
from harness import free_port, get, health, query, sample, states, wait_for

from pgsched import repository

# Half the poll interval: the jobs below need at most four waits for a limit each, so a worker that waited for its
# polls could not finish them in time, and one that wakes for the limit finishes in a second or two.
POLL = "60s"
DRAINED_WITHIN_S = 30


def set_rate(conn) -> None:
    repository.set_queue_rate(conn, "q", 10.0, 1)


def set_group_rate(conn) -> None:
    repository.set_queue_group_rate(conn, "q", 10.0, 1)


def set_max_running(conn) -> None:
    repository.set_queue_concurrency(
        conn, "q", max_running=2, group_concurrency=None, set_max_running=True, set_group_concurrency=False
    )


def set_group_concurrency(conn) -> None:
    repository.set_queue_concurrency(
        conn, "q", max_running=None, group_concurrency=1, set_max_running=False, set_group_concurrency=True
    )


@pytest.mark.parametrize(
    ("limit", "groups"),
    [
        (set_rate, [None] * 5),
        (set_group_rate, ["a", "b"] * 4),
        (set_max_running, [None] * 8),
        (set_group_concurrency, ["a", "b"] * 4),
    ],
    ids=["rate", "group rate", "max running", "group concurrency"],
)
def test_a_worker_held_back_by_a_limit_wakes_when_the_limit_lets_it(
    dsn, conn, start_worker, add_jobs, limit, groups
) -> None:
    limit(conn)
    worker = start_worker("--queue", "q", "--concurrency", "10", "--poll-interval", POLL)
    wait_for(lambda: query(dsn, "SELECT 1 FROM sched_workers"), 30, "the worker to register")
    # One statement, one NOTIFY: the first claim is woken by it; every later one by the limit.
    ids = []
    for group in sorted(set(groups), key=str):
        ids += add_jobs("sleepy", groups.count(group), payload='{"seconds": 0.01}', queue="q", group=group)
    wait_for(lambda: states(dsn).get("succeeded") == len(ids), DRAINED_WITHIN_S, "the limited queue to drain")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.log()[-2000:]
    # The limit held all the same: at a rate of 10 a second in bursts of 1, starts of one bucket are at least
    # 0.1 s apart (the claim's own moments, to the microsecond it rounds up to).
    if limit in (set_rate, set_group_rate):
        rows = query(
            dsn,
            "SELECT array_agg(extract(epoch FROM started_at)::float8 ORDER BY started_at) FROM sched_jobs_all "
            f"GROUP BY {'group_name' if limit is set_group_rate else 'queue'}",
        )
        for (starts,) in rows:
            assert all(b - a >= 0.1 - 1e-5 for a, b in itertools.pairwise(starts)), starts


OTHER_APP = """
from pgsched.worker import task


@task("idle")
async def idle(payload, ctx):
    return None
"""


def test_a_worker_that_cannot_use_the_tokens_backs_off_to_its_polls(dsn, conn, app_dir, start_worker, add_jobs) -> None:
    # Worker A takes a token every 50 ms; worker B serves the same queue for another task only. Each claim of B
    # finds nothing, and each time the bucket would have a token in under 50 ms: B would wake twenty times a
    # second for tokens it cannot use. Its shortest wait doubles with each claim in a row that found nothing, so
    # it comes back to its polls (one a second here) within a second or two.
    (app_dir / "otherapp.py").write_text(OTHER_APP)
    repository.set_queue_rate(conn, "q", 20.0, 1)
    add_jobs("sleepy", 200, payload='{"seconds": 0.001}', queue="q")
    port = free_port()
    start_worker("--queue", "q", "--concurrency", "4")
    other = start_worker("--queue", "q", "--app", "otherapp", "--poll-interval", "1s", "--health-port", str(port))
    wait_for(lambda: health(port), 30, "the other worker's health server")
    wait_for(lambda: states(dsn).get("succeeded", 0) >= 10, 30, "the first worker to take tokens")
    started = sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no") or 0
    time.sleep(4)
    claims = sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no") - started
    assert sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="yes") is None
    # Waking for each token, it would have claimed about 80 times; backing off, about 4 polls plus the doubling
    # waits that were left (at most about 10 in all).
    assert claims <= 20, claims
    assert states(dsn).get("succeeded", 0) < 200  # the tokens were still being taken meanwhile
    other.send(signal.SIGTERM)
    assert other.wait(timeout=30) == 0, other.log()[-2000:]
