"""One SIGTERM or Ctrl-C sent to the whole process group of `sched worker --processes N` (what a terminal does,
and `kill -TERM -PGID`) is one graceful stop: each child hears it once, from the supervisor, so running jobs
finish instead of being released as if a second signal had come (docs/protocol.md, "Shutdown")."""

from __future__ import annotations

import os
import signal

from harness import query, scalar, wait_for


def test_a_signal_to_the_whole_group_lets_running_jobs_finish(dsn, start_worker, add_jobs) -> None:
    supervisor = start_worker("--processes", "2", "--concurrency", "1", "--shutdown-timeout", "30s")
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM sched_workers") == 2, 30, "two worker processes")
    ids = add_jobs("sleepy", 2, '{"seconds": 3}')
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM executions WHERE phase = 'start'") == 2, 20, "both jobs")
    os.killpg(supervisor.pid, signal.SIGTERM)  # the supervisor leads its group (start_worker's own session)
    assert supervisor.wait(timeout=30) == 0, supervisor.log()[-3000:]
    assert "second signal" not in supervisor.log()
    rows = query(dsn, "SELECT DISTINCT state::text, attempt FROM sched_jobs_all WHERE id = ANY(%s)", (ids,))
    assert rows == [("succeeded", 1)], supervisor.log()[-3000:]
