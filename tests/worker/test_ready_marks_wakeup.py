"""A job committed behind an idle worker's reading position (docs/protocol.md, "Where a claim starts reading"):
a producer's transaction began before a job the worker then claimed, and commits after it. The NOTIFY wakes the
worker, whose claim reads from its positions and passes the job over; the worker's probe must find it and wake
the worker, not its next poll an hour later."""

from __future__ import annotations

import signal
import sys
import time

import psycopg
from harness import scalar, wait_for

from pgsched import Client

# A worker that reads from its positions whatever reading from the beginning costs, as while vacuum is held back.
WORKER = [
    sys.executable,
    "-c",
    "from pgsched import repository\nrepository.ReadyMarks.CHEAP_PROBE_S = 0.0\nfrom pgsched.cli import main\nmain()",
    "worker",
]


def state(dsn: str, job_id: int) -> str:
    return scalar(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,))


def test_a_job_committed_behind_the_position_is_found_by_the_probe(dsn, start_worker, add_jobs) -> None:
    worker = start_worker("--concurrency", "2", "--poll-interval", "1h", command=WORKER)
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM sched_workers") == 1, 20, "the worker to register")
    with psycopg.connect(dsn) as producer:
        producer.execute("SELECT now()")  # the producer's transaction begins: its jobs' run_at is this moment
        time.sleep(0.2)  # longer than the 50 ms margin
        [first] = add_jobs("count")
        wait_for(lambda: state(dsn, first) == "succeeded", 20, "the first job")
        late = Client(conn=producer).enqueue("count").id
        producer.commit()
    wait_for(lambda: state(dsn, late) == "succeeded", 30, "the job committed behind the position")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
