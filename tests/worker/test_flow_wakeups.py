"""A worker held back by flow control comes back when the limit lets it, not a poll interval later
(docs/protocol.md, "When a held-back worker looks again"): when a rate limit that is out of tokens has its next
one, and, while its queue caps running jobs, when its own ended runs are written. Each worker here polls once a
minute, so a queue drained well inside that minute was drained by those wake-ups (before them, each bucket's
token or freed slot waited for the next poll: a rate of 60/s with bursts of 1 drained one job a second)."""

from __future__ import annotations

import itertools
import signal
import time

import psycopg
import pytest
from harness import free_port, get, health, query, sample, scalar, states, wait_for

from pgsched import repository
from pgsched.models import NewJob

# Half the poll interval: the jobs below need at most four waits for a limit each, so a worker that waited for its
# polls could not finish them in time, and one that wakes for the limit finishes in a second or two.
POLL = "60s"
DRAINED_WITHIN_S = 30


def set_rate(conn) -> None:
    repository.set_queue_rate(conn, "q", 10.0, 1)


def set_group_rate(conn) -> None:
    repository.set_queue_group_rate(conn, "q", 10.0, 1)


def set_rate_and_group_rate(conn) -> None:
    repository.set_queue_rate(conn, "q", 50.0, 1)
    repository.set_queue_group_rate(conn, "q", 50.0, 1)


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
        # Both buckets due at one moment: a claim that read them a hair before it once made the worker sleep a
        # whole poll interval (the claim's moment, as the server placed it, came after the token).
        (set_rate_and_group_rate, ["a"] * 200),
        (set_max_running, [None] * 8),
        (set_group_concurrency, ["a", "b"] * 4),
    ],
    ids=["rate", "group rate", "rate and group rate", "max running", "group concurrency"],
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
    # The limit held all the same: in bursts of 1, starts of one bucket are at least 1 / rate apart (the claim's
    # own moments, to the microsecond it rounds up to).
    if limit in (set_rate, set_group_rate, set_rate_and_group_rate):
        rows = query(
            dsn,
            "SELECT array_agg(extract(epoch FROM started_at)::float8 ORDER BY started_at) FROM sched_jobs_all "
            f"GROUP BY {'queue' if limit is set_rate else 'group_name'}",
        )
        for (starts,) in rows:
            gap = 1 / (50.0 if limit is set_rate_and_group_rate else 10.0)
            assert all(b - a >= gap - 1e-5 for a, b in itertools.pairwise(starts)), starts


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
    time.sleep(2)  # the back-off doubles its way up to the poll interval within about 1.3 s
    started = sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no") or 0
    time.sleep(4)
    claims = sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no") - started
    assert sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="yes") is None
    # Waking for each token, it would claim about 80 times in those four seconds; backing off, once a poll.
    assert claims <= 8, claims
    assert states(dsn).get("succeeded", 0) < 200  # the tokens were still being taken meanwhile
    other.send(signal.SIGTERM)
    assert other.wait(timeout=30) == 0, other.log()[-2000:]


def notify_idle_wakeups(dsn: str, count: int) -> None:
    """NOTIFYs that find nothing to claim (a job another worker took first, say)."""
    with psycopg.connect(dsn, autocommit=True) as notifier:
        for _ in range(count):
            notifier.execute("NOTIFY sched_wakeup, 'q'")
            time.sleep(0.05)


def test_wake_ups_that_find_nothing_leave_no_token_waits_behind(dsn, conn, start_worker) -> None:
    # An idle worker on a rate-limited queue: each wake-up finds nothing, and the bucket, with its whole token,
    # was not what held the claim back. Such claims once each left a token wait behind that fired again after
    # every poll, so forty NOTIFYs turned into seventy claims every ten seconds, for good.
    repository.set_queue_rate(conn, "q", 10.0, 1)
    port = free_port()
    start_worker("--queue", "q", "--poll-interval", "5s", "--health-port", str(port))
    wait_for(lambda: health(port), 30, "the worker's health server")
    notify_idle_wakeups(dsn, 40)
    time.sleep(0.5)
    before = sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no")
    time.sleep(4)
    # At most the one poll of those four seconds (and one more if it fell at an edge).
    assert sample(get(port, "/metrics")[1], "sched_claims_total", queue="q", took="no") - before <= 2


def test_idle_wake_ups_do_not_slow_a_later_token_wait(dsn, conn, start_worker, add_jobs) -> None:
    # Two workers of one slot each, a group at 2 jobs a second. Many NOTIFYs found nothing first; then one
    # worker takes the group's long job, and the other must take the group's short jobs as its tokens come, not
    # when its back-off for those NOTIFYs (which says nothing of tokens) allows, nor when the long job ends.
    repository.set_queue_group_rate(conn, "q", 2.0, 1)
    workers = [start_worker("--queue", "q", "--concurrency", "1", "--poll-interval", "60s") for _ in range(2)]
    wait_for(lambda: len(query(dsn, "SELECT 1 FROM sched_workers")) == 2, 30, "both workers to register")
    notify_idle_wakeups(dsn, 30)
    add_jobs("sleepy", 1, payload='{"seconds": 30}', queue="q", group="g", priority=10)
    short = add_jobs("sleepy", 5, payload='{"seconds": 0.01}', queue="q", group="g")
    # At 2 a second after the long one took the first token: about 2.5 s; 15 s is far from the 30 s job's end.
    wait_for(
        lambda: (
            query(dsn, "SELECT count(*) FROM sched_jobs_all WHERE id = ANY(%s) AND state = 'succeeded'", (short,))
            == [(5,)]
        ),
        15,
        "the short jobs to run as the group's tokens come",
    )
    for worker in workers:
        worker.send(signal.SIGTERM)


def test_a_worker_that_loses_the_race_for_tokens_keeps_looking(dsn, conn, start_worker, add_jobs) -> None:
    # Two workers of one slot race for a group's tokens; the loser's claims find nothing, its back-off doubles,
    # and it once doubled up to the poll interval (a minute here). When the winner then takes a long job, the
    # loser must take the group's remaining short jobs as the tokens come: it looks again at least every second.
    repository.set_queue_group_rate(conn, "q", 20.0, 1)
    workers = [start_worker("--queue", "q", "--concurrency", "1", "--poll-interval", "60s") for _ in range(2)]
    wait_for(lambda: len(query(dsn, "SELECT 1 FROM sched_workers")) == 2, 30, "both workers to register")
    repository.enqueue_many(
        conn,
        [NewJob(task="sleepy", payload_json='{"seconds": 0.001}', queue="q", group="g", priority=5)] * 200
        + [NewJob(task="sleepy", payload_json='{"seconds": 30}', queue="q", group="g", priority=4)]
        + [NewJob(task="sleepy", payload_json='{"seconds": 0.001}', queue="q", group="g", priority=3)] * 10,
    )
    long_started = wait_for(
        lambda: scalar(dsn, "SELECT extract(epoch FROM started_at)::float8 FROM sched_jobs_all WHERE priority = 4"),
        60,
        "the long job to start",
    )
    last = wait_for(
        lambda: scalar(
            dsn,
            "SELECT CASE WHEN count(started_at) = 10 THEN extract(epoch FROM max(started_at))::float8 END "
            "FROM sched_jobs_all WHERE priority = 3",
        ),
        20,
        "the last short jobs to start",
    )
    # Within a second of looking again, plus ten tokens at 20 a second, plus room for a slow machine.
    assert last - long_started < 5, last - long_started
    for worker in workers:
        worker.send(signal.SIGTERM)


def test_a_burst_worker_waits_for_slots_that_other_workers_runs_hold(dsn, conn, start_worker, add_jobs) -> None:
    # --burst exits once nothing is ready and nothing runs. Jobs held back only by a cap that another worker's
    # run fills are ready all the same: the burst worker waits for the slot (as for a rate's tokens) instead of
    # leaving them queued.
    set_max_running(conn)
    add_jobs("sleepy", 2, payload='{"seconds": 3}', queue="q")
    other = start_worker("--queue", "q", "--concurrency", "2")
    wait_for(lambda: states(dsn).get("running") == 2, 30, "the other worker to fill both slots")
    add_jobs("sleepy", 3, payload='{"seconds": 0.01}', queue="q")
    burst = start_worker("--queue", "q", "--burst", "--poll-interval", "200ms")
    assert burst.wait(timeout=60) == 0, burst.log()[-2000:]
    assert "queued" not in states(dsn), states(dsn)
    other.send(signal.SIGTERM)
    assert other.wait(timeout=30) == 0, other.log()[-2000:]
