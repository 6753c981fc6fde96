"""A worker's claims start reading the ready index where its last claims left off (docs/protocol.md, "Where a
claim starts reading"): while a snapshot holds vacuum back they step over the entries of jobs already claimed,
yet a higher priority is still taken first and a job left behind is taken by the next full pass."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from support.marks import NeverFull, drain, index_buffers, statement_buffers

from pgsched import db, repository
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query


def _claim(dsn: str, worker: str, marks: repository.ReadyMarks | None, limit: int) -> list:
    async def body() -> list:
        conn = await db.connect_async(dsn)
        try:
            return await repository.claim_jobs(conn, worker, "default", ["t"], limit, marks)
        finally:
            await conn.close()

    return asyncio.run(body())


def _ready_scan_buffers(dsn: str, segments: repository.Segments) -> int:
    """Shared buffers the claim's scans of the ready index touch (a claim of 10, rolled back)."""
    params = repository.claim_params("default", ["t"], 10, str(uuid.uuid4()), segments)
    return index_buffers(dsn, query("JobClaim"), params, "sched_jobs_ready")


@pytest.mark.slow
def test_claims_step_over_the_jobs_claimed_while_a_snapshot_holds_vacuum_back(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    asyncio.run(_register(dsn, worker))
    with psycopg.connect(dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM sched_jobs_all")  # the snapshot: no row version after it can be removed
        marks = NeverFull()
        for _ in range(4):
            repository.enqueue_many(conn, [NewJob(task="t") for _ in range(5_000)])
            assert drain(dsn, worker, marks, 500) == 5_000
        repository.enqueue_many(conn, [NewJob(task="t") for _ in range(100)])
        from_marks = _ready_scan_buffers(dsn, marks.segments(float("-inf")))
        full_pass = _ready_scan_buffers(dsn, repository.FULL_PASS)
        holder.rollback()
    # The full pass checks each of the 20,000 dead entries against the table; the claim from the marks starts
    # at the last batch's first job.
    assert full_pass > 400, full_pass
    assert from_marks < 60, (from_marks, full_pass)


async def _register(dsn: str, worker: str) -> None:
    conn = await db.connect_async(dsn)
    try:
        await repository.register_worker(
            conn, worker, "host", 1, ["default"], ["t"], 1, stale_after_s=300, timeout_grace_s=10
        )
    finally:
        await conn.close()


def test_a_higher_priority_job_added_later_is_claimed_first(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    marks = NeverFull()
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(5)])
    assert len(_claim(dsn, worker, marks, 2)) == 2  # the first claim is a full pass; it learns level 0
    assert not marks.segments(0.0).full
    urgent = repository.enqueue(conn, NewJob(task="t", priority=7)).id
    middle = repository.enqueue(conn, NewJob(task="t", priority=-3)).id
    taken = {job.id for job in _claim(dsn, worker, marks, 4)}
    assert urgent in taken
    assert middle not in taken  # level 0 still has three jobs, ahead of -3
    assert len(taken) == 4
    assert [job.id for job in _claim(dsn, worker, marks, 4)] == [middle]


def test_a_job_given_back_behind_the_positions_is_found_by_the_probe(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    marks = NeverFull()
    first = repository.enqueue(conn, NewJob(task="t")).id
    conn.run("UPDATE sched_jobs SET run_at = run_at - interval '1 minute' WHERE id = %s", (first,))
    later = [repository.enqueue(conn, NewJob(task="t")).id for _ in range(4)]
    (job,) = _claim(dsn, worker, marks, 1)  # full pass: the oldest job
    assert job.id == first
    assert [j.id for j in _claim(dsn, worker, marks, 1)] == [later[0]]  # from the positions, which move to it
    # The first job is given back (a stopping worker's release keeps its run_at): it is now behind the positions.
    asyncio.run(_record(dsn, worker, Outcome(job.id, job.lease, OutcomeKind.RELEASED)))
    assert [j.id for j in _claim(dsn, worker, marks, 1)] == [later[1]]
    # The probe, as the worker's maintenance runs it, finds it and moves the level back.
    assert asyncio.run(_probe(dsn, marks)) == 1
    assert [j.id for j in _claim(dsn, worker, marks, 1)] == [first]
    assert [j.id for j in _claim(dsn, worker, marks, 1)] == [later[2]]
    assert asyncio.run(_probe(dsn, marks)) == 0  # nothing before the positions any more
    # A full pass finds such a job too.
    (job,) = _claim(dsn, worker, marks, 1)
    asyncio.run(_record(dsn, worker, Outcome(job.id, job.lease, OutcomeKind.RELEASED)))
    marks.rewind()
    assert [j.id for j in _claim(dsn, worker, marks, 1)] == [job.id]


async def _probe(dsn: str, marks: repository.ReadyMarks) -> int:
    conn = await db.connect_async(dsn)
    try:
        levels = marks.probe_levels(float("inf"))
        assert levels is not None
        probe = await repository.first_ready(conn, "default", ["t"], levels)
        return marks.probed(probe.firsts, took_s=0.0, now=0.0)
    finally:
        await conn.close()


async def _record(dsn: str, worker: str, outcome: Outcome) -> None:
    conn = await db.connect_async(dsn)
    try:
        await repository.record_outcomes(conn, worker, [outcome])
    finally:
        await conn.close()


def test_a_producer_that_commits_within_the_margin_is_not_left_behind(dsn: str, conn: db.Connection) -> None:
    worker = str(uuid.uuid4())
    marks = NeverFull()
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(3)])
    with psycopg.connect(dsn) as producer:
        # The producer's transaction begins (run_at is its start) before the jobs a claim takes next...
        producer.execute("BEGIN")
        producer.execute("SELECT now()")
        repository.enqueue_many(conn, [NewJob(task="t") for _ in range(2)])
        assert len(_claim(dsn, worker, marks, 3)) == 3  # full pass
        assert len(_claim(dsn, worker, marks, 1)) == 1  # from the marks: the fourth job
        (late,) = producer.execute(
            "INSERT INTO sched_jobs (queue, task) VALUES ('default', 't') RETURNING id"
        ).fetchone()
        producer.commit()  # ...and commits after it, within the margin
    taken = {j.id for j in _claim(dsn, worker, marks, 5)}
    assert late in taken and len(taken) == 2


EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def _claims_in(dsn: str, limits: list[int], timezone: str | None = None) -> list[list[int]]:
    """The ids each claim of one worker (one set of positions) takes, claim after claim."""

    async def body() -> list[list[int]]:
        conn = await db.connect_async(dsn)
        try:
            if timezone is not None:
                await conn.rows("SELECT set_config('TimeZone', %s, false)", (timezone,))
            marks, worker = NeverFull(), str(uuid.uuid4())
            return [
                [job.id for job in await repository.claim_jobs(conn, worker, "default", ["t"], limit, marks)]
                for limit in limits
            ]
        finally:
            await conn.close()

    return asyncio.run(body())


@pytest.mark.parametrize("timezone", [None, "America/New_York"])
def test_a_job_due_at_the_earliest_time_does_not_stop_the_next_claim(
    dsn: str, conn: db.Connection, timezone: str | None
) -> None:
    # West of UTC the session shows that run_at as a date before year 1, which no Python datetime holds; in UTC,
    # a position 50 ms before it would be out of range.
    earliest = repository.enqueue(conn, NewJob(task="t", run_at=EARLIEST)).id
    later = repository.enqueue(conn, NewJob(task="t")).id
    assert _claims_in(dsn, [1, 1], timezone) == [[earliest], [later]]


async def _delaying_proxy(upstream: dict, delay_s: float) -> asyncio.Server:
    """A TCP proxy to the server that holds every answer back for ``delay_s``: a database across a network."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(
            upstream["host"], int(upstream.get("port") or 5432)
        )
        await asyncio.gather(pipe(client_reader, server_writer, 0.0), pipe(server_reader, client_writer, delay_s))

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_the_probe_counts_the_servers_time_not_the_round_trip(dsn: str, conn: db.Connection) -> None:
    """A worker far from its database (every answer 40 ms late) keeps full passes while the front is cheap: the
    probe's cost is the server's time for it, so the round trip does not make the front look costly."""
    worker = str(uuid.uuid4())
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(3)])
    marks = repository.ReadyMarks()
    _claim(dsn, worker, marks, 1)  # the level becomes known, so the probe has something to read

    async def probe() -> tuple[repository.FirstReady, float]:
        upstream = psycopg.conninfo.conninfo_to_dict(dsn)
        proxy = await _delaying_proxy(upstream, 0.04)
        port = proxy.sockets[0].getsockname()[1]
        far = await db.connect_async(psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port))
        try:
            levels = marks.probe_levels(float("inf"))
            assert levels == [0]
            started = time.monotonic()
            found = await repository.first_ready(far, "default", ["t"], levels)
            return found, time.monotonic() - started
        finally:
            await far.close()
            proxy.close()

    found, waited_s = asyncio.run(probe())
    assert [f[0] for f in found.firsts] == [0]
    assert waited_s >= 0.04
    assert 0 < found.server_s <= waited_s - 0.04  # the answer's 40 ms on the way back are not the server's
    marks.probed(found.firsts, took_s=found.server_s, now=0.0)
    if found.server_s < repository.ReadyMarks.CHEAP_PROBE_S:
        assert marks.segments(1.0).full  # cheap: claims keep reading from the front


async def _probe_as_maintenance(dsn: str, marks: repository.ReadyMarks, queue: str) -> int | None:
    conn = await db.connect_async(dsn)
    try:
        return await repository.probe_ready(conn, queue, ["t"], marks, now=float("inf"))
    finally:
        await conn.close()


def _claim_buffers(dsn: str, queue: str, segments: repository.Segments, grouped: bool) -> int:
    """Shared buffers one JobClaim of 10 touches (rolled back): of a fair queue, the whole claim, inside the
    functions it calls too; of a plain queue, its scans of the ready index."""
    params = repository.claim_params(queue, ["t"], 10, str(uuid.uuid4()), segments)
    if not grouped:
        return index_buffers(dsn, query("JobClaim"), params, "sched_jobs_ready")
    return statement_buffers(dsn, query("JobClaim"), params)


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "fair"])
def test_a_new_worker_on_a_drained_queue_stops_walking_the_claimed_jobs_after_its_first_probe(
    dsn: str, conn: db.Connection, grouped: bool
) -> None:
    # A worker that has not claimed yet knows no position: each of its claims was a full pass, which while vacuum
    # is held back walks every job claimed since (a worker restarted during the incident, polling an idle queue
    # once a second). Its probe now looks at the default level; finding it empty while the walk costs, the
    # worker reads that level from the probe's start on, and a fair queue's question about groups stops there too.
    other, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    for worker in (other, fresh):
        asyncio.run(_register(dsn, worker))
    with psycopg.connect(dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM sched_jobs_all")
        jobs = [NewJob(task="t", group=f"g{i % 50}" if grouped else None) for i in range(10_000)]
        repository.enqueue_many(conn, jobs)
        assert drain(dsn, other, NeverFull(), 500) == 10_000
        marks = NeverFull()
        assert _claim(dsn, fresh, marks, 10) == []  # its first claim: a full pass
        walking = _claim_buffers(dsn, "default", marks.segments(float("-inf")), grouped)
        assert asyncio.run(_probe_as_maintenance(dsn, marks, "default")) == 0
        positioned = _claim_buffers(dsn, "default", marks.segments(float("-inf")), grouped)
        # Jobs added afterwards are claimed from there; one added behind the position (a producer's transaction
        # that began a minute ago) is found by the next probe.
        (job,) = repository.enqueue_many(conn, [NewJob(task="t", group="g1" if grouped else None)])
        assert [j.id for j in _claim(dsn, fresh, marks, 10)] == [job.id]
        (late,) = repository.enqueue_many(conn, [NewJob(task="t", group="g2" if grouped else None)])
        conn.run("UPDATE sched_jobs SET run_at = run_at - interval '1 minute' WHERE id = %s", (late.id,))
        assert _claim(dsn, fresh, marks, 10) == []
        assert asyncio.run(_probe_as_maintenance(dsn, marks, "default")) == 1
        assert [j.id for j in _claim(dsn, fresh, marks, 10)] == [late.id]
        holder.rollback()
    # The full pass walks the 10,000 dead entries: for a fair queue, the grouped index (the question about groups)
    # and then the ready index (8,300 buffers of the whole claim against 220, most of them the catalog in a new
    # session); for a plain queue the ready index (counted alone: ~300 buffers against a handful).
    if grouped:
        assert walking > 4_000 and positioned < 500, (walking, positioned)
    else:
        assert walking > 200 and positioned < 20, (walking, positioned)


def test_the_claims_array_literals_read_back_as_the_lists_they_encode(conn: db.Connection) -> None:
    # The claim sends its segments as array literals (Segments.literals): names that an array literal would
    # otherwise split, unquote or read as NULL, and times at the ends of the range and in other time zones.
    from datetime import timedelta, timezone

    segments = repository.Segments()
    far_east = timezone(timedelta(hours=13, minutes=45))
    times = [datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=far_east)]
    names = ["a,b", 'c"d', "e\\f", "NULL", " spaced ", "{braces}", "ünï", "", 'x\\"y']
    for number, name in enumerate(names):
        segments.add_group(name, number - 3, times[number % 2], times[(number + 1) % 2], 2**62 + number)
    segments.add(2**31 - 1, -(2**31), times[0], 0, datetime(9999, 12, 31, tzinfo=UTC))
    segments.add(5, 5, times[1], 7, times[1] + timedelta(hours=1))
    columns = {
        "seg_hi": "int[]",
        "seg_lo": "int[]",
        "seg_run_at": "timestamptz[]",
        "seg_id": "bigint[]",
        "seg_until": "timestamptz[]",
        "seg_full": "bool",
        "grp_name": "text[]",
        "grp_priority": "int[]",
        "grp_from": "timestamptz[]",
        "grp_run_at": "timestamptz[]",
        "grp_id": "bigint[]",
    }
    # Compared on the server with the driver's own dumping of the lists, in a session east and one west of UTC.
    sql = "SELECT " + ", ".join(f"%({key})s::{kind} = %(list_{key})s::{kind}" for key, kind in columns.items())
    params = {**segments.literals(), **{f"list_{key}": value for key, value in segments.params().items()}}
    for zone in ("Pacific/Kiritimati", "America/Los_Angeles"):
        conn.run(f"SET TimeZone = '{zone}'")
        assert conn.row(sql, params) == (True,) * len(columns), zone
