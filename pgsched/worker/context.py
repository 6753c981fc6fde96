"""What a handler receives besides its payload: the job's identity, progress reporting, and cancellation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class JobContext:
    """The handler's view of its job: ``job_id``, ``attempt``, ``queue``, ``task``, ``progress()`` and
    ``cancelled`` (True once the job was cancelled or timed out; a sync handler should check it and stop)."""

    __slots__ = ("_report", "attempt", "cancelled", "job_id", "max_attempts", "queue", "task")

    def __init__(
        self, job_id: int, attempt: int, max_attempts: int, queue: str, task: str, report: Callable[..., None]
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.queue = queue
        self.task = task
        self.cancelled = False
        self._report = report

    def progress(self, value: dict[str, Any] | float | int | str) -> None:
        """Publish progress (a JSON object, or a number/string stored as {"value": ...}); writes are
        coalesced so that a chatty handler costs at most a few database writes per second. Safe from threads."""
        body = value if isinstance(value, dict) else {"value": value}
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
        self._report(self, text)

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now fails the job for good."""
        return self.attempt >= self.max_attempts
