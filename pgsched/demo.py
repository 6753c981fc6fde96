"""``sched demo``: a realistic mixed workload (emails, images, a backup and its upload, a cleanup scheduled a
minute out, a fan-out/fan-in report, and jobs that fail and retry), run by a real worker under the live
dashboard, then summarized. The handlers below are the demo's ``--app`` module."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pgsched.worker.registry import task

QUEUES = ["demo.emails", "demo.images", "demo.backups", "demo.reports"]


@task("demo.send_email", backoff=1)
async def send_email(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Pretend to talk to a mail server; about one in ten attempts hits a transient error."""
    await asyncio.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.1:
        raise ConnectionError(f"SMTP server busy while sending to {payload['to']}")
    return {"message_id": f"<{ctx.job_id}.{ctx.attempt}@demo.local>"}


@task("demo.resize_image", timeout=30)
def resize_image(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A synchronous, CPU-ish handler run in the thread pool, reporting progress per size."""
    sizes = payload.get("sizes", [64, 256, 1024])
    for done, size in enumerate(sizes, start=1):
        time.sleep(random.uniform(0.1, 0.3))
        ctx.progress({"done": done, "of": len(sizes), "size": size})
        if ctx.cancelled:
            return {"resized": sizes[:done], "stopped": True}
    return {"image": payload["image"], "resized": sizes}


@task("demo.backup_database", timeout=120)
async def backup_database(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A long job with progress; the upload depends on it."""
    for percent in range(0, 101, 20):
        ctx.progress({"percent": percent})
        await asyncio.sleep(0.5)
    return {"file": f"/backups/{payload['database']}-{ctx.job_id}.dump", "bytes": 48_211_968}


@task("demo.upload_backup")
async def upload_backup(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Runs only after the backup succeeded."""
    await asyncio.sleep(1.0)
    return {"uploaded_to": payload["bucket"]}


@task("demo.cleanup_tmp")
async def cleanup_tmp(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Scheduled a minute out: visible as 'scheduled' while the demo runs."""
    await asyncio.sleep(0.1)
    return {"removed": 0}


@task("demo.fetch_page")
async def fetch_page(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """One branch of a fan-out."""
    await asyncio.sleep(random.uniform(0.2, 1.0))
    return {"page": payload["page"], "rows": random.randint(10, 500)}


@task("demo.build_report")
async def build_report(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """The fan-in: waits for every page."""
    await asyncio.sleep(0.3)
    return {"report": payload["name"], "pages": payload["pages"]}


@task("demo.charge_card", max_attempts=3, backoff=1)
async def charge_card(payload: dict[str, Any], ctx: Any) -> None:
    """Always declined: retried with backoff, then failed for good, with the error kept."""
    await asyncio.sleep(0.05)
    raise RuntimeError(f"card ending {payload['card'][-4:]} declined (attempt {ctx.attempt} of {ctx.max_attempts})")


def enqueue_workload(dsn: str) -> dict[str, Any]:
    """Add the demo's jobs and return the ids worth looking at."""
    import json

    from pgsched import db, repository
    from pgsched.models import NewJob

    def job(task_name: str, queue: str, payload: dict[str, Any], **kw: Any) -> NewJob:
        return NewJob(task=task_name, queue=queue, payload_json=json.dumps(payload), **kw)

    with db.connect(dsn) as conn:
        emails = [
            job("demo.send_email", "demo.emails", {"to": f"user{i}@example.com", "template": "welcome"})
            for i in range(60)
        ]
        repository.enqueue_many(conn, emails)
        images = [
            job("demo.resize_image", "demo.images", {"image": f"photos/{i:04d}.jpg", "sizes": [64, 256, 1024]})
            for i in range(24)
        ]
        repository.enqueue_many(conn, images)
        backup = repository.enqueue(conn, job("demo.backup_database", "demo.backups", {"database": "shop"}))
        upload = repository.enqueue(
            conn, job("demo.upload_backup", "demo.backups", {"bucket": "s3://backups/shop"}, after=[backup.id])
        )
        cleanup = repository.enqueue(conn, job("demo.cleanup_tmp", "demo.backups", {"path": "/tmp"}, delay_s=60))
        pages = [repository.enqueue(conn, job("demo.fetch_page", "demo.reports", {"page": p})).id for p in range(1, 11)]
        report = repository.enqueue(
            conn, job("demo.build_report", "demo.reports", {"name": "weekly", "pages": len(pages)}, after=pages)
        )
        declined = repository.enqueue(conn, job("demo.charge_card", "demo.reports", {"card": "4000000000000002"}))
    return {
        "backup": backup.id,
        "upload": upload.id,
        "cleanup": cleanup.id,
        "report": report.id,
        "declined": declined.id,
        "total": len(emails) + len(images) + 5 + len(pages),
    }


def start_worker(dsn: str, log_path: str, concurrency: int = 20) -> subprocess.Popen:
    """A real worker process serving the demo queues with this module's handlers, logging to ``log_path``
    (its lines would tear the live dashboard)."""
    args = [sys.executable, "-m", "pgsched", "worker", "--app", "pgsched.demo", "--concurrency", str(concurrency)]
    for queue in QUEUES:
        args += ["--queue", queue]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, env={**os.environ, "SCHED_DATABASE_URL": dsn}, stdin=subprocess.DEVNULL, stderr=log
        )


def stop_worker(worker: subprocess.Popen) -> int:
    """SIGTERM the worker and wait for its graceful exit."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()


def summary(dsn: str) -> list[dict[str, Any]]:
    """Per-task counts by state, the demo's jobs only."""
    from dataclasses import asdict

    from pgsched import db
    from pgsched.repository import reads

    with db.connect(dsn) as conn:
        return [asdict(counts) for counts in reads.count_by_task(conn, QUEUES)]


def run_demo(dsn: str, duration_s: float, watch: Callable[[float], None] | None) -> dict[str, Any]:
    """Migrate, enqueue, run a worker for ``duration_s`` (under ``watch`` when given), stop it, summarize."""
    from pgsched import db, migrate

    with db.connect(dsn) as conn:
        migrate.apply(conn)
    ids = enqueue_workload(dsn)
    import tempfile

    log_path = os.path.join(tempfile.gettempdir(), f"sched-demo-worker-{os.getpid()}.log")
    worker = start_worker(dsn, log_path)
    try:
        if watch is not None:
            watch(duration_s)
        else:
            time.sleep(duration_s)
    finally:
        code = stop_worker(worker)
    return {"ids": ids, "worker_exit": code, "worker_log": log_path, "tasks": summary(dsn)}


def run_watched(dsn: str, duration_s: float, interval_s: float) -> dict[str, Any]:
    """``run_demo`` under the live dashboard when stdout is a terminal (else it just waits), then summarize."""
    from rich.console import Console

    from pgsched import db

    console = Console()

    def watch(seconds: float) -> None:
        if not console.is_terminal:
            sys.stderr.write(f"running the demo worker for {seconds:g}s (no terminal: no live dashboard)\n")
            time.sleep(seconds)
            return
        from pgsched.dashboard import watch as live

        refreshes = max(1, round(seconds / interval_s))
        live(lambda: db.connect(dsn), interval_s, console=console, refreshes=refreshes)

    return run_demo(dsn, duration_s, watch)
