"""A network partition: a worker in its own network namespace, joined to a private PostgreSQL server by a veth
pair, loses its link in the middle of a job. A worker on the other side reaps the job once the partitioned
worker's heartbeat is stale, and finishes it. When the link comes back, the partitioned worker's late outcome
is fenced off (it changes nothing), and that worker carries on: it registers again and runs new jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scenario import WorkerFleet, enqueue, prepare, query, scalar, write_app
from support.private_server import PrivateServer, create_database, private_server

pytestmark = pytest.mark.chaos

# A private /30 on this machine only: the host end of the veth and the namespace end.
NETWORK = "10.213.47.0/30"
HOST_ADDRESS = "10.213.47.1"
NS_ADDRESS = "10.213.47.2"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the ip command is not installed"
    probe = f"schedprobe{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


class Partition:
    """A network namespace linked to the host by a veth pair; ``cut()`` and ``heal()`` the link."""

    def __init__(self) -> None:
        suffix = os.getpid() % 100_000
        self.ns = f"schedpart{suffix}"
        self.host_veth = f"schedh{suffix}"
        self.ns_veth = f"schedn{suffix}"

    def create(self) -> None:
        steps = [
            ("netns", "add", self.ns),
            ("link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth),
            ("link", "set", self.ns_veth, "netns", self.ns),
            ("addr", "add", f"{HOST_ADDRESS}/30", "dev", self.host_veth),
            ("link", "set", self.host_veth, "up"),
            ("-n", self.ns, "addr", "add", f"{NS_ADDRESS}/30", "dev", self.ns_veth),
            ("-n", self.ns, "link", "set", self.ns_veth, "up"),
            ("-n", self.ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")

    def cut(self) -> None:
        # Both ends down: no packet crosses, and neither side sees a reset, as when a cable or a switch fails.
        _ip("link", "set", self.host_veth, "down")
        _ip("-n", self.ns, "link", "set", self.ns_veth, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_veth, "up")
        _ip("-n", self.ns, "link", "set", self.ns_veth, "up")

    def destroy(self) -> None:
        # Deleting one end of a veth pair removes both; deleting the namespace would too.
        _ip("link", "del", self.host_veth)
        _ip("netns", "del", self.ns)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


@pytest.fixture
def partition() -> Iterator[Partition]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    link = Partition()
    link.destroy()  # leftovers of an earlier run that was killed
    try:
        link.create()
        yield link
    finally:
        link.destroy()


@pytest.fixture
def partition_server(partition: Partition) -> Iterator[PrivateServer]:
    """A private server listening on loopback and on the host end of the veth."""
    with private_server(listen=("127.0.0.1", HOST_ADDRESS), trusted_networks=(NETWORK,)) as started:
        yield started


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def job_row(dsn: str, job_id: int) -> tuple:
    return query(
        dsn, "SELECT state::text, attempt, result, worker_id::text FROM sched_jobs_all WHERE id = %s", (job_id,)
    )[0]


def test_a_partitioned_workers_late_outcome_is_fenced_off(
    partition: Partition, partition_server: PrivateServer, tmp_path: Path, report
) -> None:
    dsn = create_database(partition_server)
    remote_dsn = partition_server.dsn("sched", host=HOST_ADDRESS)
    prepare(dsn)
    app_dir = write_app(tmp_path / "app")
    fleet = WorkerFleet(dsn, app_dir, tmp_path, ["--stale-after", "2s", "--poll-interval", "0.5s"])
    try:
        (job_id,) = enqueue(dsn, "chaos.sleep", 1, '{"seconds": 6}')
        far = fleet.start("--concurrency", "2", prefix=partition.prefix(), dsn=remote_dsn)
        wait_for(lambda: query(dsn, "SELECT pid FROM chaos_executions WHERE phase = 'start'"), 30, "the job to start")
        assert scalar(dsn, "SELECT pid FROM chaos_executions WHERE phase = 'start'") == far.pid
        first_worker = job_row(dsn, job_id)[3]
        cut_at = time.monotonic()
        partition.cut()

        # The other side: a worker that reaps the silent worker's job and runs it to the end.
        near = fleet.start("--concurrency", "2")
        wait_for(lambda: job_row(dsn, job_id)[0] == "succeeded", 45, "the second worker to finish the job")
        state, attempt, result, second_worker = job_row(dsn, job_id)
        assert (state, attempt, result["attempt"], result["pid"]) == ("succeeded", 2, 2, near.pid)
        assert second_worker != first_worker
        assert "reaper: requeued 1 job(s)" in near.log()
        os.kill(near.pid, signal.SIGTERM)
        assert near.popen.wait(timeout=20) == 0
        partitioned_for = time.monotonic() - cut_at
        # The partitioned handler finished long ago; its outcome waits in a connection that cannot deliver it.
        assert far.alive()
        assert "fenced off" not in far.log()

        partition.heal()
        healed_at = time.monotonic()
        # TCP retransmits back off while the link is down, so the first one after healing may take a while.
        wait_for(lambda: "fenced off" in far.log(), 60, "the late outcome to be fenced off", interval=0.5)
        fenced_after = time.monotonic() - healed_at
        assert f"late outcome(s) fenced off (jobs {job_id})" in far.log()
        assert job_row(dsn, job_id) == (state, attempt, result, second_worker)
        assert query(dsn, "SELECT attempt, phase, pid FROM chaos_executions ORDER BY attempt, phase") == [
            (1, "end", far.pid),
            (1, "start", far.pid),
            (2, "end", near.pid),
            (2, "start", near.pid),
        ]

        # The partitioned worker carries on: its row was reaped, so it registers again and runs new jobs.
        wait_for(
            lambda: query(dsn, "SELECT count(*) FROM sched_workers WHERE pid = %s", (far.pid,)) == [(1,)],
            30,
            "the partitioned worker to register again",
        )
        (next_id,) = enqueue(dsn, "chaos.sleep", 1, '{"seconds": 0}')
        wait_for(lambda: job_row(dsn, next_id)[0] == "succeeded", 30, "the partitioned worker to run a new job")
        assert job_row(dsn, next_id)[2] == {"pid": far.pid, "attempt": 1}
        assert "registering again" in far.log()
        os.kill(far.pid, signal.SIGTERM)
        assert far.popen.wait(timeout=20) == 0, far.log()[-3000:]
        assert scalar(dsn, "SELECT count(*) FROM sched_workers") == 0
        report(
            "partition",
            f"partition: job {job_id} reaped and finished by the second worker after {partitioned_for:.1f}s of"
            f" partition; late outcome fenced {fenced_after:.1f}s after healing; new job run by the healed worker",
            {"partitioned_s": partitioned_for, "fenced_after_heal_s": fenced_after, "log": far.log()},
        )
    finally:
        with contextlib.suppress(Exception):
            partition.heal()
        fleet.close()
