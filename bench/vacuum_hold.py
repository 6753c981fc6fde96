"""How the claim slows while something holds vacuum back, side by side with the same work while vacuum runs.

Two throwaway databases drain the same rounds of no-op jobs through the repository's claim and outcome queries
(one connection, batches of --batch, as `sched bench`'s SQL baseline does), alternating round by round so that
both see the same machine. In one, a REPEATABLE READ transaction holds its snapshot for the whole run (as a long
report, a stuck session or a replication slot would): every claimed and finished job leaves dead rows and index
entries that nothing can remove. In the other, VACUUM runs between rounds. Each round reports the drain rate and
the shared buffers one claim of --batch jobs touches (EXPLAIN ANALYZE BUFFERS on a rolled-back claim): buffers do
not depend on how busy the machine is, so they show the trend even where the rates are noisy.

    python bench/vacuum_hold.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--rounds 10] [--jobs 20000]
        [--groups 100 [--no-fair] [--group-concurrency 5] [--group-rate 100000]] [--max-running 500]

Prints one line per round and, with --json, one JSON object. The databases are created and dropped here."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from psycopg.conninfo import make_conninfo

from pgsched import db, migrate, repository
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.sqlfiles import query

QUEUE = "vacuum"
TASKS = ["sched.noop"]


async def drain(dsn: str, batch: int, marks: repository.ReadyMarks | None) -> tuple[int, float]:
    """Claim and finish every ready job of the queue, as a worker does (with ``marks``, where its claims start
    reading the ready index, kept from round to round as a long-lived worker keeps them); return (jobs, seconds)."""
    conn = await db.connect_async(dsn)
    worker = str(uuid.uuid4())
    await repository.register_worker(conn, worker, "bench", 0, [QUEUE], TASKS, 1, stale_after_s=300, timeout_grace_s=10)
    done = 0
    started = time.perf_counter()
    while jobs := await repository.claim_jobs(conn, worker, QUEUE, TASKS, batch, marks):
        await repository.record_outcomes(conn, worker, [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs])
        done += len(jobs)
        # The probe a worker's maintenance runs on its own connection (it decides whether claims read from the
        # positions); here on the same one, so its cost counts against the drain.
        if marks is not None:
            await repository.probe_ready(conn, QUEUE, TASKS, marks)
    elapsed = time.perf_counter() - started
    await repository.deregister_worker(conn, worker)
    await conn.close()
    return done, elapsed


def claim_buffers(conn: db.Connection, batch: int, marks: repository.ReadyMarks | None, full: bool) -> int:
    """Shared buffers (hit + read) that one claim of ``batch`` jobs touches, the claim rolled back: a worker's
    usual claim (from its positions once its probe finds reading from the front costly), or a full pass."""
    segments = marks.segments(float("-inf")) if marks is not None and not full else repository.FULL_PASS
    params = repository.claim_params(QUEUE, TASKS, batch, str(uuid.uuid4()), segments)
    conn.raw.execute("BEGIN")
    try:
        (plan,) = conn.row("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query("JobClaim"), params)  # type: ignore[misc]
    finally:
        conn.raw.execute("ROLLBACK")  # the claimed jobs stay queued
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--no-marks", action="store_true", help="every claim reads the ready index from its beginning (as before)"
    )
    parser.add_argument(
        "--groups",
        type=int,
        default=0,
        help="spread the jobs over this many groups: the queue is then claimed fairly (sched_claim_limited)",
    )
    parser.add_argument(
        "--no-fair", action="store_true", help="with --groups: fair sharing off, the queue claimed in claim order"
    )
    parser.add_argument("--group-concurrency", type=int, help="with --groups: at most this many running per group")
    parser.add_argument(
        "--max-running", type=int, help="at most this many running jobs in the queue (claimed by sched_claim_limited)"
    )
    parser.add_argument(
        "--group-rate", type=float, help="with --groups: a token bucket per group of this rate per second (burst too)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:8]
    names = {"held": f"sched_vacuum_held_{suffix}", "vacuumed": f"sched_vacuum_free_{suffix}"}
    admin = db.connect(args.dsn)
    dsns = {}
    for mode, name in names.items():
        admin.run(f'CREATE DATABASE "{name}"')
        dsns[mode] = make_conninfo(args.dsn, dbname=name)
        with db.connect(dsns[mode]) as conn:
            migrate.apply(conn)
            if args.no_fair:
                repository.set_queue_fair(conn, QUEUE, False)
            if args.group_concurrency or args.max_running:
                repository.set_queue_concurrency(
                    conn, QUEUE, max_running=args.max_running, group_concurrency=args.group_concurrency
                )
            if args.group_rate:
                repository.set_queue_group_rate(conn, QUEUE, args.group_rate, args.group_rate)
    holder = db.connect(dsns["held"])
    rounds: list[dict[str, float]] = []
    try:
        # The snapshot is taken by the first statement and kept until the end: vacuum cannot remove any row
        # version that this transaction might still see.
        holder.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.raw.execute("SELECT count(*) FROM sched_jobs")
        conns = {mode: db.connect(dsn) for mode, dsn in dsns.items()}
        marks = {mode: None if args.no_marks else repository.ReadyMarks() for mode in dsns}
        for number in range(1, args.rounds + 1):
            row: dict[str, float] = {"round": number, "jobs_before": (number - 1) * args.jobs}
            for mode in ("vacuumed", "held"):
                conn = conns[mode]
                repository.enqueue_many(
                    conn,
                    [
                        NewJob(task="sched.noop", queue=QUEUE, group=f"g{i % args.groups}" if args.groups else None)
                        for i in range(args.jobs)
                    ],
                )
                row[f"{mode}_claim_buffers"] = claim_buffers(conn, args.batch, marks[mode], full=False)
                row[f"{mode}_full_pass_buffers"] = claim_buffers(conn, args.batch, marks[mode], full=True)
                jobs, seconds = asyncio.run(drain(dsns[mode], args.batch, marks[mode]))
                row[f"{mode}_per_s"] = round(jobs / seconds)
                if mode == "vacuumed":
                    conn.run("VACUUM sched_jobs")
            (dead,) = conns["held"].row("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'sched_jobs'")  # type: ignore[misc]
            row["held_dead_tuples"] = dead
            row["held_vs_vacuumed_pct"] = round(100 * row["held_per_s"] / row["vacuumed_per_s"], 1)
            rounds.append(row)
            if not args.json:
                print(
                    f"round {number:3d} ({row['jobs_before']:>9,.0f} jobs before): "
                    f"vacuumed {row['vacuumed_per_s']:>7,.0f}/s, {row['vacuumed_claim_buffers']:>6,} buffers | "
                    f"held back {row['held_per_s']:>7,.0f}/s, {row['held_claim_buffers']:>6,} buffers "
                    f"(full pass {row['held_full_pass_buffers']:>6,}), "
                    f"{dead:>9,} dead tuples | {row['held_vs_vacuumed_pct']}%",
                    flush=True,
                )
        for conn in conns.values():
            conn.close()
    finally:
        holder.close()
        for name in names.values():
            admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    if args.json:
        print(json.dumps({"jobs_per_round": args.jobs, "batch": args.batch, "rounds": rounds}))


if __name__ == "__main__":
    main()
