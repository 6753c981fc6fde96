"""Wake-ups behind a transaction pooler: a worker whose only URL goes through PgBouncer polls (and says so once);
given a second, direct URL for LISTEN (--listen-url), it starts a job a NOTIFY away from its enqueue while
claims and outcomes still go through the pooler. Prints the enqueue-to-start latency of both (p50/p95):
``python -m pytest -q -s tests/pooler/test_listen_url.py``."""

from __future__ import annotations

import random
import signal
import statistics
import time

import pytest
from harness import query, wait_for

from pgsched.client import Client

pytestmark = pytest.mark.slow

JOBS = 30


def pickup_latencies(dsn: str, producer_url: str) -> list[float]:
    """Enqueue jobs one at a time through the pooler, each once the one before has started and after a random
    pause of up to a poll interval (so that enqueues fall anywhere in it); returns seconds from enqueue to
    handler start."""
    ids = []
    with Client(producer_url) as client:
        for _ in range(JOBS):
            time.sleep(random.uniform(0.0, 1.0))
            job = client.enqueue("note").id
            ids.append(job)
            wait_for(lambda j=job: query(dsn, "SELECT 1 FROM executions WHERE job_id = %s", (j,)), 10, "a start")
    rows = query(
        dsn,
        "SELECT extract(epoch FROM e.at - j.created_at)::float8 FROM executions e"
        " JOIN sched_jobs_all j ON j.id = e.job_id WHERE e.job_id = ANY(%s)",
        (ids,),
    )
    return [seconds for (seconds,) in rows]


def p50_p95(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def test_a_listen_url_gives_fast_pickup_behind_the_pooler(dsn, pooled_dsn, start_pooled_worker) -> None:
    polling = start_pooled_worker("--concurrency", "2", "--poll-interval", "1s")
    wait_for(lambda: "transaction pooler" in polling.log(), 20, "the worker to say it polls")
    polled = pickup_latencies(dsn, pooled_dsn)
    polling.send(signal.SIGTERM)
    assert polling.wait(timeout=20) == 0, polling.log()[-3000:]

    listening = start_pooled_worker("--concurrency", "2", "--poll-interval", "1s", "--listen-url", dsn)
    wait_for(
        lambda: (
            query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sched-worker-listen'") == [(1,)]
        ),
        20,
        "the worker to listen on its direct URL",
    )
    woken = pickup_latencies(dsn, pooled_dsn)
    listening.send(signal.SIGTERM)
    assert listening.wait(timeout=20) == 0, listening.log()[-3000:]

    (poll_p50, poll_p95), (listen_p50, listen_p95) = p50_p95(polled), p50_p95(woken)
    print(
        f"\nenqueue-to-start behind PgBouncer (transaction mode), {JOBS} jobs each:"
        f" polling every 1s p50 {poll_p50 * 1000:.0f} ms p95 {poll_p95 * 1000:.0f} ms;"
        f" with --listen-url p50 {listen_p50 * 1000:.0f} ms p95 {listen_p95 * 1000:.0f} ms"
    )
    # Bounds loose enough for a loaded machine, yet far from what polling every second gives.
    assert listen_p50 < 0.2 and listen_p95 < 0.5, woken
    assert poll_p50 > 2 * listen_p50, (polled, woken)
    assert polling.log().count("transaction pooler") == 1
    assert "transaction pooler" not in listening.log()
    for log in (polling.log(), listening.log()):
        assert " ERROR " not in log, log[-3000:]


def test_behind_a_session_mode_pool_pool_mode_session_keeps_listen(dsn, server_dsn, start_pooled_worker) -> None:
    """A session-mode pool gives each client a whole server session: told so (SCHED_POOL_MODE=session), the
    worker listens through it and prepares its claim as it does on a direct connection."""
    from pgbouncer import PgBouncer

    # A server connection per client in session mode: the worker's four and the producer's.
    bouncer = PgBouncer(server_dsn, pool_size=8, pool_mode="session").start()
    try:
        url = bouncer.url(dsn)
        worker = start_pooled_worker("--poll-interval", "30s", url=url, env={"SCHED_POOL_MODE": "session"})
        wait_for(
            lambda: query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'") == [(1,)],
            20,
            "the worker to listen through the pool",
        )
        woken = pickup_latencies(dsn, url)
        assert max(woken) < 1.0, woken  # a NOTIFY, not the 30 s poll
        worker.send(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.log()[-3000:]
        assert "transaction pooler" not in worker.log()
    finally:
        bouncer.stop()
