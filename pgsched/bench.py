"""``sched bench``: throughput, latency and memory of sched on this machine, measured in a throwaway
database, each figure beside its target and, for the drain, beside a pure-SQL baseline run in the same session."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgsched import db, migrate, repository
from pgsched.errors import DatabaseError, SchedError
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.repository import bench as measured

TARGETS = {
    "drain_per_s": (">=", 40_000),
    "bulk_enqueue_per_s": (">=", 150_000),
    "single_enqueue_per_s": (">=", 2_500),
    "latency_p50_ms": ("<=", 2.0),
    "latency_p99_ms": ("<=", 5.0),
    "io_efficiency_pct": (">=", 90.0),
    "idle_worker_rss_mb": ("<=", 60.0),
}


@dataclass
class BenchConfig:
    """Sizes of each measurement."""

    jobs: int = 20_000
    concurrency: int = 1000
    batch_size: int = 500
    single_jobs: int = 2_000
    producers: int = 8
    latency_jobs: int = 200
    io_jobs: int = 2_500
    io_concurrency: int = 50
    io_sleep_s: float = 0.02
    keep_database: bool = False


Report = Callable[[str], None]


def run(server_dsn: str, config: BenchConfig, report: Report) -> dict[str, Any]:
    """Create a fresh database on the server, measure everything in it, drop it, and return the figures."""
    name = f"sched_bench_{os.getpid()}"
    with db.connect(server_dsn) as admin:
        version = measured.server_version(admin)
        try:
            db.create_database(admin, name)
        except SchedError as exc:
            raise DatabaseError(f"sched bench needs to create a database: {exc.message}") from None
    dsn = db.with_database(server_dsn, name)
    try:
        with db.connect(dsn) as conn:
            migrate.apply(conn)
            results = _measure_all(conn, dsn, config, report)
    finally:
        if not config.keep_database:
            with db.connect(server_dsn) as admin:
                db.drop_database(admin, name)
    return {
        "machine": {
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "postgres": version,
            "server": db.server_address(server_dsn),
        },
        "config": config.__dict__,
        "results": results,
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
    }


def _measure_all(conn: db.Connection, dsn: str, config: BenchConfig, report: Report) -> dict[str, Any]:
    results: dict[str, Any] = {}
    report(
        f"bulk enqueue of {config.jobs:,} jobs through Client.enqueue_many (one COPY), median of {_REPEAT} "
        "after a warm-up"
    )
    results["bulk_enqueue_per_s"] = _bulk_enqueue(conn, dsn, config.jobs)
    report(f"baseline: the same COPY of {config.jobs:,} jobs built beforehand, median of {_REPEAT}")
    results["copy_baseline_per_s"] = _copy_baseline(conn, config.jobs)
    report(f"bulk enqueue of {config.jobs:,} jobs through `sched add --jsonl`, median of {_REPEAT}")
    results["jsonl_cli_enqueue_per_s"] = _jsonl_enqueue(conn, dsn, config.jobs)
    report(f"drain of {2 * config.jobs:,} no-op jobs by one worker process")
    repository.enqueue_many(conn, noop_jobs(2 * config.jobs))
    drain = _drain(conn, dsn, config)
    results.update(drain)
    report(f"baseline: a pure-SQL claim/complete loop on {config.jobs:,} jobs, same batch size")
    results["sql_baseline_per_s"] = _sql_baseline(conn, dsn, config)
    results["drain_vs_sql_baseline_pct"] = round(100 * results["drain_per_s"] / results["sql_baseline_per_s"], 1)
    report(f"single enqueue of {config.single_jobs:,} jobs, one Client.enqueue call each")
    results["single_enqueue_per_s"] = _single_enqueue(dsn, config.single_jobs, durable=True)
    report(f"single enqueue of {config.single_jobs:,} jobs, one call each, Client(durable=False)")
    results["single_enqueue_async_commit_per_s"] = _single_enqueue(dsn, config.single_jobs, durable=False)
    report(f"baseline: {config.single_jobs:,} one-row INSERTs into a bare table, each its own commit")
    results["commit_baseline_per_s"] = _commit_baseline(conn, config.single_jobs)
    report(f"single enqueue from {config.producers} producers at once, one Client.enqueue call per job")
    results["single_enqueue_concurrent_per_s"] = _concurrent_enqueue(dsn, config.single_jobs, config.producers)
    report(f"latency of {config.latency_jobs} jobs added one at a time to an idle worker")
    results.update(_latency(conn, dsn, config))
    report(
        f"I/O-bound: {config.io_jobs:,} sched.sleep {config.io_sleep_s * 1000:g} ms jobs at concurrency "
        f"{config.io_concurrency}, then again with --no-claim-ahead"
    )
    results.update(_io_bound(conn, dsn, config))
    return results


def noop_jobs(count: int, queue: str = "default", groups: int = 0) -> list[NewJob]:
    """``count`` no-op jobs; with ``groups``, spread over that many groups in turn (g0, g1, ...), which makes the
    queue fair (docs/protocol.md, "Fair sharing")."""
    return [NewJob(task="sched.noop", queue=queue, group=f"g{i % groups}" if groups else None) for i in range(count)]


# Bulk inserts are timed this many times, each into an emptied queue, and the median reported: a single run of a
# tenth of a second says as much about what else the machine did in it as about sched.
_REPEAT = 3


def _median_rate(conn: db.Connection, queue: str, count: int, insert: Callable[[], None]) -> int:
    """Time ``insert`` (``count`` jobs into ``queue``) _REPEAT times, emptying the queue after each."""
    rates = []
    for _ in range(_REPEAT):
        started = time.perf_counter()
        insert()
        rates.append(count / (time.perf_counter() - started))
        measured.delete_queue(conn, queue)
    return round(statistics.median(rates))


def _bulk_enqueue(conn: db.Connection, dsn: str, count: int) -> int:
    """The public API: mappings of enqueue's arguments, each checked, then one COPY."""
    from pgsched.client import Client

    specs = [{"task": "sched.noop", "queue": "bulk"} for _ in range(count)]
    with Client(dsn) as client:
        # The database is new: a first, untimed insert loads its caches and creates its files.
        client.enqueue_many(specs[:2_000])
        measured.delete_queue(conn, "bulk")
        return _median_rate(conn, "bulk", count, lambda: client.enqueue_many(specs))


def _copy_baseline(conn: db.Connection, count: int) -> int:
    """The insert alone: jobs already built and checked, straight into the COPY."""
    jobs = noop_jobs(count, queue="prebuilt")
    return _median_rate(conn, "prebuilt", count, lambda: repository.enqueue_many(conn, jobs))


def _jsonl_enqueue(conn: db.Connection, dsn: str, count: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines('{"payload": {}}\n' for _ in range(count))
        path = f.name
    try:
        return _median_rate(
            conn,
            "jsonl",
            count,
            lambda: _sched(dsn, "add", "sched.noop", "--queue", "jsonl", "--jsonl", path, stdout=subprocess.DEVNULL),
        )
    finally:
        Path(path).unlink()


def _sched(dsn: str, *args: str, stdout: Any = None) -> None:
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    proc = subprocess.run(
        [sys.executable, "-m", "pgsched", *args], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        raise DatabaseError(f"`sched {args[0]}` failed during the benchmark: {proc.stderr.strip()[-300:]}")


def spawn_worker(dsn: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    return subprocess.Popen([sys.executable, "-m", "pgsched", "worker", "-q", *args], env=env)


def _drain(conn: db.Connection, dsn: str, config: BenchConfig) -> dict[str, Any]:
    ready = measured.ready_count(conn, "default")
    measured.vacuum_jobs(conn)
    started = time.perf_counter()
    worker = spawn_worker(
        dsn, "--burst", "--concurrency", str(config.concurrency), "--batch-size", str(config.batch_size)
    )
    if worker.wait() != 0:
        raise DatabaseError("the benchmark worker failed")
    wall = time.perf_counter() - started
    done, seconds = measured.succeeded_window(conn, "default")
    if done != ready:
        raise DatabaseError(f"the benchmark worker finished {done} of {ready} jobs")
    return {
        "drain_jobs": done,
        "drain_per_s": round(done / seconds),
        "drain_wall_s": round(wall, 3),
        "drain_concurrency": config.concurrency,
        "drain_batch_size": config.batch_size,
    }


def _sql_baseline(conn: db.Connection, dsn: str, config: BenchConfig) -> int:
    """Claim and complete with the same named queries, no engine in between: the database's side of the cost."""
    import asyncio
    import uuid

    repository.enqueue_many(conn, noop_jobs(config.jobs, queue="baseline"))
    measured.vacuum_jobs(conn)

    async def loop() -> float:
        claim = await db.connect_async(dsn)
        worker_id = str(uuid.uuid4())
        await repository.register_worker(
            claim,
            worker_id,
            "bench",
            os.getpid(),
            ["baseline"],
            ["sched.noop"],
            1,
            stale_after_s=30.0,
            timeout_grace_s=10.0,
        )
        started = time.perf_counter()
        while jobs := await repository.claim_jobs(claim, worker_id, "baseline", ["sched.noop"], config.batch_size):
            done = [Outcome(j.id, j.lease, OutcomeKind.SUCCEEDED) for j in jobs]
            await repository.record_outcomes(claim, worker_id, done)
        elapsed = time.perf_counter() - started
        await repository.deregister_worker(claim, worker_id)
        await claim.close()
        return elapsed

    elapsed = asyncio.run(loop())
    return round(config.jobs / elapsed)


def _single_enqueue(dsn: str, count: int, *, durable: bool) -> int:
    from pgsched.client import Client

    queue = "single" if durable else "single_async"
    with Client(dsn, durable=durable) as client:
        started = time.perf_counter()
        for _ in range(count):
            client.enqueue("sched.noop", queue=queue)
        return round(count / (time.perf_counter() - started))


def _commit_baseline(conn: db.Connection, count: int) -> int:
    """What one connection's commits cost on this server (each waits for its WAL flush): the ceiling of any
    one-at-a-time durable insert, measured here so the single-enqueue figure can be read against it."""
    with measured.commit_table(conn):
        started = time.perf_counter()
        for _ in range(count):
            measured.commit_one(conn)
        return round(count / (time.perf_counter() - started))


def _concurrent_enqueue(dsn: str, count: int, producers: int) -> int:
    """Several producers, each adding jobs one per call on its own connection: commits share WAL flushes."""
    import threading

    from pgsched.client import Client

    per_producer = max(1, count // producers)
    clients = [Client(dsn) for _ in range(producers)]
    barrier = threading.Barrier(producers + 1)

    def produce(client: Client) -> None:
        barrier.wait()
        for _ in range(per_producer):
            client.enqueue("sched.noop", queue="concurrent")

    threads = [threading.Thread(target=produce, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return round(per_producer * producers / elapsed)


def wait_for_worker(conn: db.Connection, worker: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if measured.worker_registered(conn, worker.pid):
            return
        if worker.poll() is not None:
            raise DatabaseError("the benchmark worker exited early")
        time.sleep(0.05)
    raise DatabaseError("the benchmark worker did not start")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def p50_ms(latencies: list[float]) -> float:
    """The median of sorted latencies, rounded to 10 µs."""
    return round(statistics.median(latencies), 2)


def p99_ms(latencies: list[float]) -> float:
    """The 99th percentile of sorted latencies, rounded to 10 µs."""
    return round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)


def _latency(conn: db.Connection, dsn: str, config: BenchConfig) -> dict[str, Any]:
    worker = spawn_worker(dsn, "--queue", "latency", "--concurrency", "10")
    try:
        wait_for_worker(conn, worker)
        time.sleep(2.0)
        idle_rss = _rss_mb(worker.pid)
        job = NewJob(task="sched.noop", queue="latency")
        for _ in range(config.latency_jobs):
            repository.enqueue(conn, job)
            # Space the jobs out so each one meets an idle worker.
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, _ = measured.succeeded_window(conn, "latency")
            if done >= config.latency_jobs:
                break
            time.sleep(0.05)
        latencies = measured.latencies_ms(conn, "latency")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    if not latencies:
        raise DatabaseError("no latency samples were recorded")
    return {
        "latency_p50_ms": p50_ms(latencies),
        "latency_p99_ms": p99_ms(latencies),
        "latency_max_ms": round(latencies[-1], 2),
        "idle_worker_rss_mb": idle_rss,
    }


def _io_bound(conn: db.Connection, dsn: str, config: BenchConfig) -> dict[str, Any]:
    """The same I/O-bound jobs run twice: as a worker runs by default, then claiming only for free slots
    (--no-claim-ahead), the baseline that shows what claiming ahead is worth."""
    ideal = config.io_concurrency / config.io_sleep_s
    payload = f'{{"seconds": {config.io_sleep_s}}}'
    rates = {}
    for queue, extra in (("io", ()), ("io_free_slots", ("--no-claim-ahead",))):
        repository.enqueue_many(
            conn, [NewJob(task="sched.sleep", queue=queue, payload_json=payload) for _ in range(config.io_jobs)]
        )
        worker = spawn_worker(dsn, "--burst", "--queue", queue, "--concurrency", str(config.io_concurrency), *extra)
        if worker.wait() != 0:
            raise DatabaseError("the I/O-bound benchmark worker failed")
        done, seconds = measured.succeeded_window(conn, queue)
        rates[queue] = done / seconds
    return {
        "io_per_s": round(rates["io"]),
        "io_ideal_per_s": round(ideal),
        "io_efficiency_pct": round(100 * rates["io"] / ideal, 1),
        "io_free_slots_only_efficiency_pct": round(100 * rates["io_free_slots"] / ideal, 1),
    }


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    """Whether each measured figure meets its target."""
    out = {}
    for key, (op, target) in TARGETS.items():
        value = results.get(key)
        if value is not None:
            out[key] = value >= target if op == ">=" else value <= target
    return out
