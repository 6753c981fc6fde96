"""Task handlers: the ``@task`` decorator, the registry the worker reads, the built-in tasks, and loading
the user's handler module (``--app`` / ``SCHED_APP``)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgsched.errors import InvalidInput
from pgsched.models import check_task

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A registered handler and the limits it declares (None: use the job's own)."""

    name: str
    fn: Handler
    is_async: bool
    max_attempts: int | None = None
    timeout_s: float | None = None
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 3600.0
    cron: str | None = None
    cron_queue: str | None = None


class Registry:
    """Task names mapped to their handlers."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskSpec] = {}

    def task(
        self,
        name: str,
        *,
        max_attempts: int | None = None,
        timeout: float | str | None = None,
        backoff: float | str | tuple[float | str, float | str] | None = None,
        cron: str | None = None,
        cron_queue: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``name``.

        ``backoff`` is the base delay of the exponential retry backoff, or a (base, cap) pair; durations may be
        seconds or strings such as ``"30s"``. ``cron`` also runs the task on that schedule (in UTC), each job
        added to ``cron_queue``, or else to the first queue of the worker that records the schedule."""
        check_task(name)
        try:
            options = _checked_options(max_attempts, timeout, backoff, cron, cron_queue)
        except InvalidInput as exc:
            raise InvalidInput(f"task {name}: {exc.message}") from None

        def register(fn: Handler) -> Handler:
            if name in self.tasks and self.tasks[name].fn is not fn:
                raise InvalidInput(f"task {name!r} is registered twice")
            self.tasks[name] = TaskSpec(name, fn, inspect.iscoroutinefunction(fn), *options)
            return fn

        return register

    def names(self) -> list[str]:
        """Registered task names, sorted."""
        return sorted(self.tasks)


def _checked_options(
    max_attempts: int | None,
    timeout: float | str | None,
    backoff: float | str | tuple[float | str, float | str] | None,
    cron: str | None,
    cron_queue: str | None,
) -> tuple[int | None, float | None, float, float, str | None, str | None]:
    """``task``'s options checked, in TaskSpec's order after ``is_async``."""
    from pgsched.durations import to_seconds
    from pgsched.models import check_max_attempts, check_queue, check_timeout

    if max_attempts is not None:
        check_max_attempts(max_attempts)
    timeout_s = check_timeout(to_seconds(timeout)) if timeout is not None else None
    base, cap = 2.0, 3600.0
    if backoff is not None:
        raw_base, raw_cap = backoff if isinstance(backoff, tuple) else (backoff, None)
        base = to_seconds(raw_base)
        cap = to_seconds(raw_cap) if raw_cap is not None else max(cap, base)
        if not 0 < base <= cap:
            raise InvalidInput("backoff must be positive and at most its cap")
    if cron is not None:
        from pgsched.schedules import check_cron  # croniter, only for a task that has a schedule

        cron = check_cron(cron)
    if cron_queue is not None:
        if cron is None:
            raise InvalidInput("cron_queue needs cron")
        check_queue(cron_queue)
    return max_attempts, timeout_s, base, cap, cron, cron_queue


registry = Registry()
task = registry.task


@task("sched.noop")
async def _noop(payload: dict[str, Any], ctx: Any) -> None:
    """Do nothing: for trying and benchmarking the queue."""


@task("sched.sleep")
async def _sleep(payload: dict[str, Any], ctx: Any) -> None:
    """Sleep for ``payload["seconds"]`` (default 1): an I/O-bound job."""
    seconds = payload.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError('sched.sleep needs {"seconds": <non-negative number>}')
    await asyncio.sleep(seconds)


@task("sched.fail")
async def _fail(payload: dict[str, Any], ctx: Any) -> None:
    """Fail with ``payload["message"]``: for trying retries and failure handling."""
    raise RuntimeError(str(payload.get("message", "sched.fail was asked to fail")))


def load_app(module: str | None) -> None:
    """Import the user's handler module so its ``@task`` decorators register; a failure is bad usage."""
    if not module:
        return
    if os.getcwd() not in sys.path:
        # A worker started next to its code should find it, as `python -m` would.
        sys.path.insert(0, os.getcwd())
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import-time failure of user code is reported the same way
        raise InvalidInput(f"cannot import --app {module!r}: {type(exc).__name__}: {exc}") from None
    from loguru import logger

    logger.debug("loaded app {} in {:.0f} ms", module, (time.perf_counter() - started) * 1000)
