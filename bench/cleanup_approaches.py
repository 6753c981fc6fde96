"""What finished jobs cost to record and to clean up: today's row-by-row delete, side by side with a history table
partitioned by slot whose slots are truncated or dropped whole.

Two throwaway databases, both migrated with the repository's migrations. In "today", workers finish jobs as
they do now (JobSetSucceededMany: the row stays in sched_jobs as succeeded) and `sched cleanup` deletes them
(pgsched.admin.cleanup, the JobDeleteFinished loop, older than 0), then VACUUM removes what it left. In
"history", a prototype table sched_jobs_history (sched_jobs' columns plus slot, LIST-partitioned into --slots
slots, indexes on id and finished_at) receives finished jobs: one statement DELETEs the running rows from
sched_jobs under the same fencing as JobSetSucceededMany and INSERTs them into the history table as succeeded.

1. Completion: --jobs jobs each way, in --rounds rounds that alternate between the two databases (the order
   swapped every round) so both see the same machine. Each round adds its jobs through the repository's COPY
   path (not timed), then drains them on one connection with the repository's claim, batches of --batch, as
   bench/vacuum_hold.py does, finishing each batch the database's way. A VACUUM of sched_jobs after each round
   in both removes what the round left there (old row versions, or the moved rows), timed apart.
2. Cleanup of the --jobs finished jobs: today's `sched cleanup` and the VACUUM after it, against TRUNCATE of a
   slot, DETACH + DROP of a slot, and DETACH CONCURRENTLY + DROP of a slot (each --repeat times, the slot
   refilled with a copy of the drained rows, not timed).
3. Row-by-row delete of the same rows from a plain history-shaped table with one index (finished_at), with the
   loop `sched cleanup` runs, and the VACUUM after it: the table's shape is not what makes a truncate cheap.

A CHECKPOINT precedes every timed cleanup, as days pass between a job's end and its cleanup in production: the
first change to each page after a checkpoint writes the whole page to the WAL. WAL bytes are read from the
server's WAL insert position (pg_current_wal_insert_lsn) before and after, so they include whatever else the
server wrote meanwhile; the first and the last line report that background rate (for exact figures, point
--dsn at a server nothing else writes to).

    python bench/cleanup_approaches.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--jobs 500000]
        [--rounds 5] [--batch 500] [--slots 8] [--repeat 3] [--cleanup-batch 5000] [--json]

Prints one line per measurement and, with --json, one JSON object. Needs a role that may create databases and run
CHECKPOINT. The databases are created and dropped here."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pgsched import admin, db, migrate, repository
from pgsched.models import ClaimedJob, NewJob, Outcome, OutcomeKind

QUEUE = "cleanup"
TASKS = ["sched.noop"]
MODES = ("today", "history")

# The columns a finished job's row changes: the rest are copied from the running row as they are.
FINISHED = {
    "state": "'succeeded'::sched_job_state",
    "finished_at": "now()",
    "result": "%(results)s::jsonb -> d.lease::text",
    "error": "NULL",
}

Complete = Callable[[db.AsyncConnection, str, list[ClaimedJob]], Awaitable[int]]
Say = Callable[[str], None]

LABELS = {
    "truncate": "TRUNCATE",
    "detach_drop": "DETACH + DROP",
    "detach_concurrently_drop": "DETACH CONCURRENTLY + DROP",
}


def history_ddl(slots: int) -> list[str]:
    """The prototype history table: sched_jobs' columns plus slot, one LIST partition per slot."""
    ddl = [
        "CREATE TABLE sched_jobs_history (slot smallint NOT NULL, LIKE sched_jobs INCLUDING DEFAULTS) "
        "PARTITION BY LIST (slot)",
        "CREATE INDEX sched_jobs_history_id ON sched_jobs_history (id)",
        "CREATE INDEX sched_jobs_history_finished ON sched_jobs_history (finished_at)",
    ]
    ddl += [partition_ddl(slot) for slot in range(slots)]
    return ddl


def partition_ddl(slot: int) -> str:
    return f"CREATE TABLE sched_jobs_history_{slot} PARTITION OF sched_jobs_history FOR VALUES IN ({slot})"


def job_columns(conn: db.Connection) -> list[str]:
    rows = conn.rows(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'sched_jobs'::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum"
    )
    return [r[0] for r in rows]


def move_sql(columns: list[str]) -> str:
    """The prototype completion: the fencing of JobSetSucceededMany, but the rows move to the history table."""
    values = ", ".join(FINISHED.get(c, f"d.{c}") for c in columns)
    return (
        "WITH done AS (DELETE FROM sched_jobs j "
        "WHERE j.id = ANY(%(ids)b::bigint[]) AND j.lease = ANY(%(leases)b::bigint[]) "
        "AND j.state::text = 'running' AND j.worker_id = %(worker_id)s RETURNING j.*) "
        f"INSERT INTO sched_jobs_history (slot, {', '.join(columns)}) SELECT %(slot)s::smallint, {values} FROM done d "
        "RETURNING lease, id, has_dependents"
    )


def wal_lsn(conn: db.Connection) -> str:
    row = conn.row("SELECT pg_current_wal_insert_lsn()::text")
    assert row is not None
    return str(row[0])


def wal_since(conn: db.Connection, lsn: str) -> int:
    row = conn.row("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)::bigint", [lsn])
    assert row is not None
    return int(row[0])


@contextmanager
def measured(server: db.Connection, into: dict[str, Any]) -> Iterator[None]:
    """Record the wall seconds and server WAL bytes of the block in ``into``."""
    lsn = wal_lsn(server)
    started = time.perf_counter()
    yield
    into["seconds"] = round(time.perf_counter() - started, 6)
    into["wal_bytes"] = wal_since(server, lsn)


async def complete_today(conn: db.AsyncConnection, worker: str, jobs: list[ClaimedJob]) -> int:
    outcomes = [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs]
    return len((await repository.record_outcomes(conn, worker, outcomes)).written)


def complete_history(sql: str, slot: int) -> Complete:
    async def complete(conn: db.AsyncConnection, worker: str, jobs: list[ClaimedJob]) -> int:
        params = {
            "worker_id": worker,
            "ids": [j.id for j in jobs],
            "leases": [j.lease for j in jobs],
            "results": None,
            "slot": slot,
        }
        async with conn.transaction():
            # Planned with the arrays' values, as record_outcomes does, so "= ANY(leases)" is a hash lookup.
            return len(await conn.rows(sql, params, prepare=False))

    return complete


async def drain(dsn: str, batch: int, marks: repository.ReadyMarks, complete: Complete) -> int:
    """Claim and finish every ready job of the queue, ``batch`` at a time, as a worker does; return how many."""
    conn = await db.connect_async(dsn)
    worker = str(uuid.uuid4())
    await repository.register_worker(conn, worker, "bench", 0, [QUEUE], TASKS, 1, stale_after_s=300, timeout_grace_s=10)
    done = 0
    while jobs := await repository.claim_jobs(conn, worker, QUEUE, TASKS, batch, marks):
        done += await complete(conn, worker, jobs)
    await repository.deregister_worker(conn, worker)
    await conn.close()
    return done


def sizes_mb(conn: db.Connection, table: str) -> tuple[float, float]:
    row = conn.row("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", [table, table])
    assert row is not None
    return round(row[0] / 2**20, 1), round(row[1] / 2**20, 1)


def rate(rows: int, seconds: float) -> int:
    return round(rows / seconds) if seconds > 0 else 0


def wal_mb(figures: dict[str, Any]) -> str:
    return f"{figures['wal_bytes'] / 2**20:,.2f} MB WAL"


def background_wal(server: db.Connection, seconds: float = 2.0) -> int:
    """WAL bytes per second the server writes while this benchmark does nothing."""
    lsn = wal_lsn(server)
    time.sleep(seconds)
    return round(wal_since(server, lsn) / seconds)


def completion_rounds(
    args: argparse.Namespace, dsns: dict[str, str], conns: dict[str, db.Connection], move: str, say: Say
) -> list[dict[str, Any]]:
    completes: dict[str, Complete] = {"today": complete_today, "history": complete_history(move, 0)}
    marks = {mode: repository.ReadyMarks() for mode in MODES}
    rounds = []
    for number in range(1, args.rounds + 1):
        count = args.jobs // args.rounds + (1 if number <= args.jobs % args.rounds else 0)
        row: dict[str, Any] = {"round": number, "jobs": count}
        for mode in MODES if number % 2 else MODES[::-1]:
            conn = conns[mode]
            repository.enqueue_many(conn, [NewJob(task="sched.noop", queue=QUEUE) for _ in range(count)])
            figures: dict[str, Any] = {}
            with measured(conn, figures):
                done = asyncio.run(drain(dsns[mode], args.batch, marks[mode], completes[mode]))
            assert done == count, f"{mode}: finished {done} of {count}"
            row[f"{mode}_per_s"] = rate(done, figures["seconds"])
            row[f"{mode}_seconds"] = figures["seconds"]
            row[f"{mode}_wal_bytes_per_job"] = round(figures["wal_bytes"] / done)
            # What the round left behind in sched_jobs (the old row versions or the moved rows) is vacuum's work.
            vacuum: dict[str, Any] = {}
            with measured(conn, vacuum):
                conn.run("VACUUM sched_jobs")
            row[f"{mode}_vacuum_seconds"] = vacuum["seconds"]
            row[f"{mode}_vacuum_wal_bytes_per_job"] = round(vacuum["wal_bytes"] / done)
        row["history_vs_today_pct"] = round(100 * row["history_per_s"] / row["today_per_s"], 1)
        rounds.append(row)
        say(
            f"completion round {number} ({count:,} jobs): today (UPDATE) {row['today_per_s']:>7,}/s, "
            f"{row['today_wal_bytes_per_job']:>5,} WAL bytes/job | history (DELETE+INSERT) "
            f"{row['history_per_s']:>7,}/s, {row['history_wal_bytes_per_job']:>5,} WAL bytes/job | "
            f"{row['history_vs_today_pct']}% | VACUUM sched_jobs after it: today {row['today_vacuum_seconds']:.2f} s, "
            f"{row['today_vacuum_wal_bytes_per_job']} WAL bytes/job, history {row['history_vacuum_seconds']:.2f} s, "
            f"{row['history_vacuum_wal_bytes_per_job']} WAL bytes/job"
        )
    return rounds


def delete_and_vacuum(
    conn: db.Connection, table: str, delete_all: Callable[[], int], expected: int, label: str, say: Say
) -> dict[str, Any]:
    """Time ``delete_all`` (a cleanup loop that returns how many rows it deleted) after a CHECKPOINT, then the
    VACUUM of ``table`` that must follow it."""
    figures: dict[str, Any] = {"table_mb_before": sizes_mb(conn, table)}
    conn.run("CHECKPOINT")
    delete: dict[str, Any] = {}
    with measured(conn, delete):
        deleted = delete_all()
    assert deleted == expected, f"{label}: deleted {deleted} of {expected}"
    delete["rows_per_s"] = rate(deleted, delete["seconds"])
    say(f"{label} of {deleted:,} jobs: {delete['seconds']:.2f} s, {delete['rows_per_s']:,} rows/s, {wal_mb(delete)}")
    vacuum: dict[str, Any] = {}
    with measured(conn, vacuum):
        conn.run(f"VACUUM {table}")
    say(f"{label}: VACUUM {table} after it: {vacuum['seconds']:.2f} s, {wal_mb(vacuum)}")
    return figures | {"delete": delete, "vacuum": vacuum, "table_mb_after": sizes_mb(conn, table)}


def today_cleanup(conn: db.Connection, args: argparse.Namespace, say: Say) -> dict[str, Any]:
    """`sched cleanup --older-than 0` (pgsched.admin.cleanup, the JobDeleteFinished loop) and the VACUUM after it."""

    def cleanup() -> int:
        return admin.cleanup(conn, 0.0, args.cleanup_batch).deleted

    label = f"today: sched cleanup (batches of {args.cleanup_batch:,})"
    return delete_and_vacuum(conn, "sched_jobs", cleanup, args.jobs, label, say)


def partition_cleanup(conn: db.Connection, args: argparse.Namespace, say: Say) -> dict[str, Any]:
    """TRUNCATE, DETACH + DROP and DETACH CONCURRENTLY + DROP of a slot holding the drained jobs, --repeat times."""
    columns = job_columns(conn)
    # The drained rows, kept aside to refill a slot before each measurement.
    conn.run("CREATE TABLE history_source AS SELECT * FROM sched_jobs_history_0")
    source = ", ".join(columns)
    figures: dict[str, Any] = {"slot_mb": sizes_mb(conn, "sched_jobs_history_0")}
    say(f"history: one slot holds {args.jobs:,} jobs, table/indexes {figures['slot_mb'][0]}/{figures['slot_mb'][1]} MB")

    def fill(slot: int) -> None:
        (count,) = conn.row(f"SELECT count(*) FROM sched_jobs_history_{slot}")  # type: ignore[misc]
        if count == 0:
            conn.run(f"INSERT INTO sched_jobs_history (slot, {source}) SELECT {slot}, {source} FROM history_source")
            conn.run(f"VACUUM sched_jobs_history_{slot}")

    # Each operation's slot: the truncate measures the drained slot itself first, then its refills.
    operations = {
        "truncate": (0, ["TRUNCATE sched_jobs_history_{slot}"]),
        "detach_drop": (
            2,
            [
                "ALTER TABLE sched_jobs_history DETACH PARTITION sched_jobs_history_{slot}",
                "DROP TABLE sched_jobs_history_{slot}",
            ],
        ),
        "detach_concurrently_drop": (
            3,
            [
                "ALTER TABLE sched_jobs_history DETACH PARTITION sched_jobs_history_{slot} CONCURRENTLY",
                "DROP TABLE sched_jobs_history_{slot}",
            ],
        ),
    }
    for name in operations:
        figures[name] = []
    for repeat in range(1, args.repeat + 1):
        for name, (slot, statements) in operations.items():
            fill(slot)
            conn.run("CHECKPOINT")
            run: dict[str, Any] = {}
            with measured(conn, run):
                for statement in statements:
                    conn.run(statement.format(slot=slot))
            if name != "truncate":
                recreate: dict[str, Any] = {}
                with measured(conn, recreate):
                    conn.run(partition_ddl(slot))
                run["recreate_seconds"] = recreate["seconds"]
            figures[name].append(run)
            say(
                f"history: {LABELS[name]} of a slot of {args.jobs:,} jobs (repeat {repeat}): "
                f"{run['seconds'] * 1000:,.1f} ms, {run['wal_bytes']:,} WAL bytes"
                + (
                    f" (an empty slot made again: {run['recreate_seconds'] * 1000:,.1f} ms)"
                    if name != "truncate"
                    else ""
                )
            )
    for name in operations:
        figures[f"{name}_median_ms"] = round(1000 * statistics.median(r["seconds"] for r in figures[name]), 1)
        figures[f"{name}_median_wal_bytes"] = round(statistics.median(r["wal_bytes"] for r in figures[name]))
    return figures


def plain_delete(conn: db.Connection, args: argparse.Namespace, say: Say) -> dict[str, Any]:
    """Row-by-row deletes, in `sched cleanup`'s batches, from a history-shaped table with one index."""
    conn.run("CREATE TABLE history_plain AS SELECT * FROM history_source")
    conn.run("CREATE INDEX history_plain_finished ON history_plain (finished_at)")
    conn.run("VACUUM history_plain")

    def cleanup() -> int:
        deleted = 0
        while True:
            batch = conn.run(
                "WITH doomed AS (SELECT ctid FROM history_plain WHERE finished_at < now() ORDER BY finished_at "
                "LIMIT %(batch)s FOR UPDATE SKIP LOCKED) DELETE FROM history_plain h USING doomed "
                "WHERE h.ctid = doomed.ctid",
                {"batch": args.cleanup_batch},
            )
            deleted += batch
            if batch < args.cleanup_batch:
                return deleted

    label = f"plain table, one index: row-by-row delete (batches of {args.cleanup_batch:,})"
    return delete_and_vacuum(conn, "history_plain", cleanup, args.jobs, label, say)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cleanup-batch", type=int, default=5000, help="rows per transaction, as sched cleanup's")
    parser.add_argument("--no-plain", action="store_true", help="skip the row-by-row delete from a plain table")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.slots < 4:
        parser.error("--slots must be at least 4 (slots 0 to 3 are measured)")

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    suffix = uuid.uuid4().hex[:8]
    names = {mode: f"sched_cleanup_{mode}_{suffix}" for mode in MODES}
    server = db.connect(args.dsn)
    result: dict[str, Any] = {"jobs": args.jobs, "batch": args.batch, "cleanup_batch": args.cleanup_batch}
    try:
        dsns = {}
        for mode, name in names.items():
            db.create_database(server, name)
            dsns[mode] = db.with_database(args.dsn, name)
        conns = {mode: db.connect(dsn) for mode, dsn in dsns.items()}
        for conn in conns.values():
            migrate.apply(conn)
        for statement in history_ddl(args.slots):
            conns["history"].run(statement)
        result["background_wal_bytes_per_s"] = [background_wal(server)]
        say(f"background: the server wrote {result['background_wal_bytes_per_s'][0]:,} WAL bytes/s while this was idle")

        rounds = completion_rounds(args, dsns, conns, move_sql(job_columns(conns["history"])), say)
        result["completion_rounds"] = rounds
        medians = {
            key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0] if key.startswith(MODES)
        }
        medians["history_vs_today_pct"] = round(100 * medians["history_per_s"] / medians["today_per_s"], 1)
        result["completion_medians"] = medians
        say(
            f"completion medians: today {medians['today_per_s']:,.0f}/s, {medians['today_wal_bytes_per_job']:,.0f} "
            f"WAL bytes/job | history {medians['history_per_s']:,.0f}/s, "
            f"{medians['history_wal_bytes_per_job']:,.0f} WAL bytes/job | {medians['history_vs_today_pct']}% | "
            f"VACUUM after a round: today {medians['today_vacuum_seconds']:.2f} s, "
            f"{medians['today_vacuum_wal_bytes_per_job']:,.0f} WAL bytes/job, history "
            f"{medians['history_vacuum_seconds']:.2f} s, "
            f"{medians['history_vacuum_wal_bytes_per_job']:,.0f} WAL bytes/job"
        )

        result["today_cleanup"] = today_cleanup(conns["today"], args, say)
        result["partition_cleanup"] = partition_cleanup(conns["history"], args, say)
        part = result["partition_cleanup"]
        say(
            "history medians: truncate {truncate_median_ms:,} ms ({truncate_median_wal_bytes:,} WAL bytes), "
            "detach + drop {detach_drop_median_ms:,} ms ({detach_drop_median_wal_bytes:,}), detach concurrently + "
            "drop {detach_concurrently_drop_median_ms:,} ms ({detach_concurrently_drop_median_wal_bytes:,})".format(
                **part
            )
        )
        if not args.no_plain:
            result["plain_delete"] = plain_delete(conns["history"], args, say)
        for conn in conns.values():
            conn.close()
        result["background_wal_bytes_per_s"].append(background_wal(server))
        say(f"background: the server wrote {result['background_wal_bytes_per_s'][1]:,} WAL bytes/s while this was idle")
    finally:
        for name in names.values():
            db.drop_database(server, name)
        server.close()
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
