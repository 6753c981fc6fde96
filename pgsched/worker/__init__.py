"""The worker: runs registered handlers for claimed jobs (see engine.py), alone or as a supervised group."""

from __future__ import annotations

from pgsched.worker.engine import Worker, WorkerConfig
from pgsched.worker.registry import Registry, TaskSpec, load_app, registry, task

__all__ = ["Registry", "TaskSpec", "Worker", "WorkerConfig", "load_app", "registry", "run_worker", "task"]


def run_worker(dsn: str, config: WorkerConfig, app: str | None = None) -> int:
    """Load the handler module, run one worker until it stops, and return its exit code."""
    import asyncio

    load_app(app)
    metrics = None
    if config.health_port is not None:
        from pgsched.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics()
    return asyncio.run(Worker(dsn, config, registry, metrics).run())
