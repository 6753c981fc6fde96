"""The worker: runs registered handlers for claimed jobs (engine.py wires its parts), alone or as a supervised
group."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from loguru import logger as _logger

from pgsched.worker.config import WorkerConfig
from pgsched.worker.context import Fail, JobContext, Retry
from pgsched.worker.engine import Worker
from pgsched.worker.registry import Registry, TaskSpec, load_app, registry, task

# A library stays quiet unless its application asks for logs; the CLI enables them (pgsched.logs). Nothing in
# the package logs while being imported, so disabling here, before any of it runs, is early enough.
_logger.disable("pgsched")

__all__ = [
    "Fail",
    "JobContext",
    "Registry",
    "Retry",
    "TaskSpec",
    "Worker",
    "WorkerConfig",
    "load_app",
    "registry",
    "run_worker",
    "task",
]


def run_worker(dsn: str, config: WorkerConfig, app: str | None = None) -> int:
    """Load the handler module, run one worker until it stops, and return its exit code."""
    load_app(app)
    metrics = None
    if config.health_port is not None:
        from pgsched.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics()
    worker = Worker(dsn, config, registry, metrics)

    async def run() -> int:
        code = await worker.run()
        if worker.executor.abandoned_tasks:
            # The loop's own shutdown would cancel and then wait for an async handler that ignores cancellation
            # (as long as it runs, perhaps for ever); its job was already released or failed: leave now.
            _exit_now(code, f"{worker.executor.abandoned_tasks} async handler(s) still running")
        return code

    code = _run_on_best_loop(run())
    _exit_now_if_handlers_linger(code)
    return code


def _run_on_best_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: its timers are tighter and its loop cheaper, which I/O-bound jobs
    feel (about 88% against 91% of the ideal rate in `sched bench`); plain asyncio otherwise."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _exit_now_if_handlers_linger(code: int) -> None:
    """A sync handler still running after shutdown released its job cannot be killed, and the interpreter
    would join its thread at exit, holding the process for as long as the handler runs. Its outcome is
    already given up (fenced), so leave without waiting."""
    import threading
    import time

    # Idle pool threads end as soon as they see the pool's shutdown; give them a moment.
    deadline = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread.name.startswith("sched-job"):
            thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in threading.enumerate() if t.name.startswith("sched-job") and t.is_alive()]
    if not lingering:
        return
    _exit_now(code, f"{len(lingering)} sync handler(s) still running")


def _exit_now(code: int, what: str) -> None:
    """Leave at once with ``code``, saying which handlers are still running."""
    import os
    import sys

    from loguru import logger

    logger.warning("exiting with {}; their outcomes were given up", what)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
