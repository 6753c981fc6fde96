"""Workers under fire: 20,000 short jobs, four worker processes with one SIGKILLed at random every 2 s and
replaced, and the PostgreSQL server restarted once mid-run. Nothing may be lost, nothing may run more often
than the kills and the restart can explain, nothing may be left running, and no worker may crash or spin."""

from __future__ import annotations

import pytest
from scenario import run_chaos
from support.private_server import PrivateServer

pytestmark = pytest.mark.chaos


def test_kills_and_a_restart_lose_nothing(server: PrivateServer, private_dsn: str, report, tmp_path) -> None:
    figures = run_chaos(
        private_dsn,
        jobs=20_000,
        workers=4,
        concurrency=20,
        kill_interval=2.0,
        stale_after="2s",
        restart=server.restart,
        restart_at=0.4,
        timeout=240,
        log_dir=tmp_path / "logs",
        seed=20_000,
    )
    report("chaos", figures.summary(), figures.as_dict())
    print(figures.summary())

    assert figures.kills >= 3, "the jobs finished before the workers were killed a few times"
    assert figures.restarts == 1
    assert figures.states == {"succeeded": figures.jobs}, figures.states
    assert figures.jobs_never_run == 0
    assert figures.executions <= figures.jobs + figures.duplicate_bound, figures.as_dict()
    assert figures.duplicates <= figures.duplicate_bound
    # Every worker still alive at the end stopped cleanly, and no worker row outlived a final `sched reap`.
    assert figures.survivors_exit_codes == [0] * 4, figures.as_dict()
    assert figures.worker_rows_after_reap == 0
    # Reconnection with backoff, not a tight loop: for the one restart, each of a worker's four connections
    # logs its loss once and a failed reconnection at most once, reconnects within a handful of attempts, and
    # logs stay short.
    assert figures.connection_lost_lines <= 2 * 4 * figures.workers * figures.restarts, figures.as_dict()
    assert figures.max_reconnect_attempts <= 10, figures.as_dict()
    assert figures.max_log_lines < 100, figures.as_dict()
    assert not figures.errors_logged, figures.errors_logged
