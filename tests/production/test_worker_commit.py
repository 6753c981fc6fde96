"""SCHED_WORKER_COMMIT takes PostgreSQL's synchronous_commit levels and nothing else; what each costs and buys
in a failover is measured by test_failover.py."""

from __future__ import annotations


def test_an_unknown_level_is_refused_in_one_line(dsn: str, sched_at) -> None:
    refused = sched_at(dsn, "worker", "--burst", env={"SCHED_WORKER_COMMIT": "sometimes"})
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: invalid setting SCHED_WORKER_COMMIT: Input should be 'off', 'local',")
    assert len(refused.stderr.splitlines()) == 1


def test_a_durable_worker_drains(dsn: str, sched_at) -> None:
    for _ in range(3):
        assert sched_at(dsn, "add", "sched.noop").returncode == 0
    drained = sched_at(dsn, "worker", "--burst", "--no-listen", env={"SCHED_WORKER_COMMIT": "remote_write"})
    assert drained.returncode == 0, drained.stderr
    status = sched_at(dsn, "status", "--json")
    assert '"succeeded": 3' in status.stdout
