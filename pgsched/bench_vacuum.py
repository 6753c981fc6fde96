"""``sched bench --vacuum-blocked``: how a worker keeps draining while a long transaction holds vacuum back,
side by side with the same work while vacuum runs (docs/protocol.md, "Where a claim starts reading").

Two throwaway databases, each with a long-lived worker, drain the same rounds of no-op jobs, alternating round by
round so that both see the same machine. In one, a REPEATABLE READ transaction holds its snapshot for the whole
run, as a long report, a forgotten session or a replication slot would: every claimed and finished job leaves dead
rows and index entries that nothing can remove. In the other, VACUUM runs between rounds. Each round reports both
drain rates (first start to last finish, read from the jobs themselves) and the dead row versions piling up. At
the end, enqueue-to-start latency is measured in both with jobs added one at a time to the idle worker, then the
snapshot ends, one VACUUM runs, and one more round shows whether the table and its indexes still grow. With
``groups``, the jobs of every round (and of the latency run) are spread over that many groups in turn, so the
workers claim them by fair sharing between groups (sched_claim_limited), from their positions in each group. The
queue's flow control (``max_running``, ``group_concurrency``, ``group_rate``; docs/protocol.md, "Queue controls") is
set the same way in both databases before the first round, so the limited claim's counts and buckets are measured
while their own rows pile up too."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgsched import db, migrate, repository
from pgsched.admin import QueueLimits, set_queue_limits
from pgsched.bench import noop_jobs, p50_ms, p99_ms, spawn_worker, wait_for_worker
from pgsched.errors import DatabaseError, SchedError
from pgsched.repository import bench as measured
from pgsched.sqlfiles import query

MODES = ("vacuumed", "held")


@dataclass
class VacuumBenchConfig:
    rounds: int = 25
    jobs: int = 40_000
    concurrency: int = 1000
    batch_size: int = 500
    latency_jobs: int = 200
    round_timeout_s: float = 600.0
    groups: int = 0
    max_running: int | None = None
    group_concurrency: int | None = None
    group_rate: str | None = None

    def limits(self) -> QueueLimits | None:
        """The flow control of the benchmark's queue, if any (InvalidInput for a bad figure)."""
        if self.max_running is None and self.group_concurrency is None and self.group_rate is None:
            return None
        return QueueLimits.parse(
            max_running=self.max_running, group_concurrency=self.group_concurrency, group_rate=self.group_rate
        )


def run(server_dsn: str, config: VacuumBenchConfig, report: Callable[[str], None]) -> dict[str, Any]:
    """Measure in two fresh databases on the server, drop them, and return the figures."""
    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {mode: f"sched_bench_{mode}_{suffix}" for mode in MODES}
    with db.connect(server_dsn) as admin:
        for name in names.values():
            try:
                db.create_database(admin, name)
            except SchedError as exc:
                raise DatabaseError(f"sched bench needs to create databases: {exc.message}") from None
        try:
            dsns = {mode: db.with_database(server_dsn, name) for mode, name in names.items()}
            return _measure(dsns, config, report)
        finally:
            for name in names.values():
                db.drop_database(admin, name)


def _measure(dsns: dict[str, str], config: VacuumBenchConfig, report: Callable[[str], None]) -> dict[str, Any]:
    conns = {mode: db.connect(dsn) for mode, dsn in dsns.items()}
    workers = {}
    holder = None
    try:
        limits = config.limits()
        for conn in conns.values():
            migrate.apply(conn)
            if limits is not None:
                set_queue_limits(conn, "default", limits)
        # The snapshot is taken by the first statement and kept until the end: vacuum can remove no row version
        # that this transaction might still see.
        holder = db.connect(dsns["held"])
        holder.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.raw.execute(query("BenchJobsTableSize"))
        for mode, dsn in dsns.items():
            workers[mode] = spawn_worker(
                dsn, "--concurrency", str(config.concurrency), "--batch-size", str(config.batch_size)
            )
            wait_for_worker(conns[mode], workers[mode])
        rounds = []
        for number in range(1, config.rounds + 1):
            row: dict[str, Any] = {"round": number, "jobs_before": (number - 1) * config.jobs}
            for mode in MODES:
                row[f"{mode}_per_s"] = _round(conns[mode], config)
                if mode == "vacuumed":
                    measured.vacuum_jobs(conns[mode])
            dead, table_bytes, index_bytes, *_ = _sizes(conns["held"])
            row["held_dead_tuples"] = dead
            row["held_table_mb"] = round(table_bytes / 2**20, 1)
            row["held_index_mb"] = round(index_bytes / 2**20, 1)
            row["held_vs_vacuumed_pct"] = round(100 * row["held_per_s"] / row["vacuumed_per_s"], 1)
            rounds.append(row)
            report(
                f"round {number} ({row['jobs_before']:,} jobs before): vacuumed {row['vacuumed_per_s']:,}/s, "
                f"held back {row['held_per_s']:,}/s ({row['held_vs_vacuumed_pct']}%), {dead:,} dead row versions"
            )
        latency = {mode: _latency(conns[mode], config) for mode in MODES}
        report(
            "latency p50/p99: vacuumed {:.2f}/{:.2f} ms, held back {:.2f}/{:.2f} ms".format(
                *latency["vacuumed"], *latency["held"]
            )
        )
        holder.raw.execute("ROLLBACK")
        # Once the snapshot ends, vacuum can remove what piled up: with a VACUUM before each, two more rounds show
        # whether the table and its indexes still grow (a page an index emptied is reused after a later vacuum).
        after_sizes = []
        for _ in range(2):
            measured.vacuum_jobs(conns["held"])
            before = _sizes(conns["held"])
            _round(conns["held"], config)
            after = _sizes(conns["held"])
            mb = [
                round(size / 2**20, 1)
                for size in (before[1], after[1], before[2], after[2], before[3], after[3], before[5], after[5])
            ]
            after_sizes.append(mb)
            report(
                f"after the snapshot ended, VACUUM and a round of {config.jobs:,} jobs: table {mb[0]} -> {mb[1]} MB, "
                f"indexes {mb[2]} -> {mb[3]} MB (the ready index {mb[4]} -> {mb[5]} MB); the history of succeeded "
                f"jobs {mb[6]} -> {mb[7]} MB (until cleanup empties its slots)"
            )
    finally:
        for worker in workers.values():
            worker.terminate()
        for worker in workers.values():
            worker.wait(timeout=60)
        if holder is not None:
            holder.close()
        for conn in conns.values():
            conn.close()
    tail = rounds[-min(5, len(rounds)) :]
    return {
        "config": {
            "rounds": config.rounds,
            "jobs_per_round": config.jobs,
            "concurrency": config.concurrency,
            "batch_size": config.batch_size,
            "groups": config.groups,
            "max_running": config.max_running,
            "group_concurrency": config.group_concurrency,
            "group_rate": config.group_rate,
        },
        "rounds": rounds,
        "held_vs_vacuumed_pct_last_rounds": round(statistics.median(r["held_vs_vacuumed_pct"] for r in tail), 1),
        "latency_ms": {mode: {"p50": p50, "p99": p99} for mode, (p50, p99) in latency.items()},
        "after_vacuum": [
            {"table_mb": [t0, t1], "index_mb": [i0, i1], "ready_index_mb": [r0, r1], "history_mb": [h0, h1]}
            for t0, t1, i0, i1, r0, r1, h0, h1 in after_sizes
        ],
    }


def _sizes(conn: db.Connection) -> tuple[int, int, int, int, int, int]:
    """Dead row versions, table bytes, index bytes, ready index bytes, last id, history bytes."""
    row = conn.row(query("BenchJobsTableSize"))
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5])


def _since(conn: db.Connection, after: int) -> tuple[int, float, list[float]]:
    row = conn.row(query("BenchJobsSince"), {"after": after})
    assert row is not None
    return int(row[0]), float(row[1]), list(row[2])


def _round(conn: db.Connection, config: VacuumBenchConfig) -> int:
    """Add one round of jobs, wait for the worker to finish them, and return its drain rate."""
    after = _sizes(conn)[4]
    repository.enqueue_many(conn, noop_jobs(config.jobs, groups=config.groups))
    deadline = time.monotonic() + config.round_timeout_s
    while True:
        done, seconds, _ = _since(conn, after)
        if done >= config.jobs:
            return round(done / seconds) if seconds > 0 else 0
        if time.monotonic() > deadline:
            raise DatabaseError(f"the benchmark worker finished {done} of {config.jobs} jobs in time")
        # The rate comes from the jobs' own times, so the poll can be slow: each costs the server ~0.2 s at a
        # million jobs, which a poll every 0.2 s took from the worker being measured.
        time.sleep(1.0)


def _latency(conn: db.Connection, config: VacuumBenchConfig) -> tuple[float, float]:
    """Enqueue-to-start latency, p50 and p99 in ms, of jobs added one at a time to the idle worker."""
    after = _sizes(conn)[4]
    for job in noop_jobs(config.latency_jobs, groups=config.groups):
        repository.enqueue(conn, job)
        time.sleep(0.02)  # each job meets an idle worker
    deadline = time.monotonic() + 60
    while (found := _since(conn, after))[0] < config.latency_jobs:
        if time.monotonic() > deadline:
            raise DatabaseError("the benchmark worker did not start the latency jobs in time")
        time.sleep(0.05)
    latencies = found[2]
    return p50_ms(latencies), p99_ms(latencies)
