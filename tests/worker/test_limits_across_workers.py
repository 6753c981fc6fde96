"""Concurrency limits across real worker processes (docs/protocol.md, "Concurrency limits"): three workers with
more slots than the limits allow drain a queue of grouped jobs; each run's start and end, noted by the handler
in the side table, show that no more than group_concurrency runs of a group, and no more than max_running runs
of the queue, ever ran at once, and that both limits were reached."""

from __future__ import annotations

import signal
from collections import defaultdict

from harness import query, states, wait_for

from pgsched import repository


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment; one that ends when another starts does not overlap it."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = top = 0
    for _, step in events:
        running += step
        top = max(top, running)
    return top


def test_three_workers_never_run_more_than_the_limits(dsn, conn, start_worker, add_jobs) -> None:
    repository.set_queue_concurrency(conn, "q", max_running=5, group_concurrency=2)
    ids: list[int] = []
    # Three groups: five running jobs in turns between them put two in some group (docs/protocol.md, "Fair sharing").
    for group in ("a", "b", "c"):
        ids += add_jobs("sleepy", 10, payload='{"seconds": 0.3}', queue="q", group=group)
    ids += add_jobs("sleepy", 4, payload='{"seconds": 0.3}', queue="q")
    workers = [start_worker("--queue", "q", "--concurrency", "4", "--poll-interval", "200ms") for _ in range(3)]
    wait_for(lambda: states(dsn).get("succeeded") == len(ids), 120, "the queue to drain")
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.log()[-2000:]
    rows = query(
        dsn,
        "SELECT j.group_name, extract(epoch FROM s.at)::float8, extract(epoch FROM e.at)::float8 "
        "FROM sched_jobs_all j JOIN executions s ON s.job_id = j.id AND s.phase = 'start' "
        "JOIN executions e ON e.job_id = j.id AND e.attempt = s.attempt AND e.phase = 'end'",
    )
    assert len(rows) == len(ids)
    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for group, start, end in rows:
        if group is not None:
            by_group[group].append((start, end))
    per_group = {group: most_at_once(runs) for group, runs in by_group.items()}
    in_queue = most_at_once([(start, end) for _, start, end in rows])
    assert max(per_group.values()) <= 2 and in_queue <= 5, (per_group, in_queue)
    # Twelve slots were offered: the limits, not the workers, held the runs back.
    assert max(per_group.values()) == 2 and in_queue == 5, (per_group, in_queue)
    # All three claimed throughout, but a worker takes again at once the slots its own ended runs free (docs/
    # protocol.md, "When a held-back worker looks again"), so the third may never find one free at its polls:
    # at least two ran jobs.
    assert len(query(dsn, "SELECT DISTINCT pid FROM executions")) >= 2


def test_three_workers_never_pass_a_group_rate(dsn, conn, start_worker, add_jobs) -> None:
    # docs/protocol.md, "Group rates": 5 jobs a second per group, bursts of 2, whichever worker claims.
    rate, burst = 5.0, 2
    repository.set_queue_group_rate(conn, "q", rate, burst)
    ids: list[int] = []
    for group in ("a", "b"):
        ids += add_jobs("sleepy", 10, payload='{"seconds": 0.01}', queue="q", group=group)
    workers = [start_worker("--queue", "q", "--concurrency", "4", "--poll-interval", "100ms") for _ in range(3)]
    wait_for(lambda: states(dsn).get("succeeded") == len(ids), 120, "the queue to drain")
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.log()[-2000:]
    # Claim moments as the database recorded them (when the claim read and charged the buckets).
    rows = query(
        dsn,
        "SELECT group_name, array_agg(extract(epoch FROM started_at)::float8 ORDER BY started_at) FROM sched_jobs_all "
        "GROUP BY 1",
    )
    for group, times in rows:
        for i in range(len(times)):
            for j in range(i, len(times)):
                allowed = burst + rate * (times[j] - times[i]) + 1e-6 * rate
                assert j - i + 1 <= allowed, (group, times)
        # The rate, not the workers, held the group back: its ten jobs took at least (10 - burst) / rate.
        assert times[-1] - times[0] >= (10 - burst) / rate - 0.01, (group, times)
