"""A lease never repeats (docs/protocol.md, "Leases and fencing"), not even across a server crash. Under the
default SCHED_WORKER_COMMIT=off a claim commits without waiting for its WAL, and a crash loses the claim together
with the lease sequence's advance; a worker's claim connection therefore moves the sequence far ahead when it
connects, and every connection to a restarted server is new. This test crashes a private server between two
claims of the same job and checks the second lease differs. (Should a lease still come back, the worker disowns
the older run: tests/worker/test_lease_reissued_after_crash.py.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from support.private_server import PrivateServer, create_database

from pgsched import db, repository
from pgsched.models import NewJob
from pgsched.worker.link import Link
from pgsched.worker.stopping import Stop

pytestmark = pytest.mark.chaos


async def _claim(dsn: str, worker: str, *, register: bool = False) -> list:
    # The worker's own claim connection: a Link that claims skips the lease sequence ahead when it connects.
    link = Link(dsn, "claim", Stop(), claims=True)
    conn = await link.get()
    try:
        if register:
            await repository.register_worker(
                conn, worker, "host", 1, ["default"], ["t"], 4, stale_after_s=30, timeout_grace_s=10
            )
        await repository.set_commit_durability(conn, "off")  # as a worker's claim connection, by default
        return await repository.claim_jobs(conn, worker, "default", ["t"], 1)
    finally:
        await conn.close()


def test_a_server_crash_never_makes_a_lease_repeat() -> None:
    # Producers commit durably; the claim (synchronous_commit off) waits in the WAL buffers: the WAL writer would
    # flush it within wal_writer_delay (200 ms by default), and the crash must find it unflushed to take it back.
    server = PrivateServer(settings={"synchronous_commit": "on", "wal_writer_delay": "10s"}).start()
    try:
        dsn = create_database(server)
        with db.connect(dsn) as conn:
            repository.enqueue(conn, NewJob(task="t"))
        worker = str(uuid.uuid4())
        [before] = asyncio.run(_claim(dsn, worker, register=True))
        server.kill()
        server.launch()
        [again] = asyncio.run(_claim(dsn, worker))
        assert again.id == before.id  # the claim was lost: the job came back
        assert again.lease != before.lease
    finally:
        server.stop()
