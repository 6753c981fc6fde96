"""What becomes of a run: a pure function from how it ended to the Outcome to store, and the buffer that
writes outcomes in batches on a connection of its own while claims go on."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loguru import logger

from pgsched import repository
from pgsched.db import AsyncConnection
from pgsched.errors import DatabaseError, DatabaseUnavailable, SchedError
from pgsched.models import ClaimedJob, JsonRefusal, Outcome, OutcomeKind, encode_json
from pgsched.worker.config import WorkerConfig
from pgsched.worker.context import Fail, Retry
from pgsched.worker.link import Link
from pgsched.worker.registry import TaskSpec

MAX_ERROR_CHARS = 4000
# Errors that say the database is busy, not that an outcome is bad: serialization failures and deadlocks (40),
# insufficient resources (53), a lock not available (55) and a statement cancelled by a timeout (57).
_TRANSIENT_SQLSTATE_CLASSES = ("40", "53", "55", "57")
_SUCCEEDED = OutcomeKind.SUCCEEDED


class StopReason(StrEnum):
    """Why the worker stopped a run before its handler ended by itself."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


@dataclass(slots=True)
class RunEnd:
    """How one run ended, as the executor saw it: the handler's result or exception, whether a cancel was
    requested meanwhile, and whether the worker stopped waiting for it (timeout or shutdown)."""

    job: ClaimedJob
    spec: TaskSpec
    cancel_requested: bool = False
    stopped: StopReason | None = None
    result: Any = None
    error: BaseException | None = None


class UnstorableResult(Exception):
    """A handler's result that cannot be stored; the message says why."""


def outcome_of(end: RunEnd, max_result_bytes: int) -> Outcome:
    """The outcome to store for a run that ended so (docs/protocol.md, "Outcomes", "Cancel" and "Timeouts").
    In this order: a cancel request wins (the job ends cancelled, whatever the handler did after it); a run stopped at
    shutdown is released without spending an attempt; a run past its timeout failed "timed out"; then the
    handler's own verdict: its exception, or its result if that can be stored."""
    job = end.job
    if end.cancel_requested:
        return _outcome(job, OutcomeKind.CANCELLED, error="cancelled on request")
    stopped = end.stopped
    if stopped is not None:  # one test on the path every job takes; enum members are slower to look up
        if stopped is StopReason.SHUTDOWN:
            return released(job)
        if stopped is StopReason.TIMEOUT:
            return _failed(end, f"timed out after {job.timeout_s:g}s")
    if end.error is not None:
        return _handler_failure(end, end.error)
    if end.result is None:
        return Outcome(job.id, job.lease, _SUCCEEDED)
    try:
        text = encode_result(end.result, max_result_bytes)
    except UnstorableResult as exc:
        # A handler that returns something unstorable would do so again: no retry.
        return _outcome(job, OutcomeKind.FAILED, error=storable_text(str(exc)), retryable=False)
    return Outcome(job.id, job.lease, _SUCCEEDED, text)


def released(job: ClaimedJob) -> Outcome:
    """Give a job back without spending an attempt (claimed but not run, or stopped at shutdown)."""
    return _outcome(job, OutcomeKind.RELEASED)


def cancelled_before_start(job: ClaimedJob) -> Outcome:
    """A job claimed ahead whose cancel was requested before its handler started: it ends cancelled unrun."""
    return _outcome(job, OutcomeKind.CANCELLED, error="cancelled on request")


def released_unknown(job_id: int, lease: int) -> Outcome:
    """Give back a job the database holds for this worker that it never received."""
    return Outcome(job_id, lease, OutcomeKind.RELEASED)


_RESULT_REFUSALS = {
    JsonRefusal.NOT_JSON: "the handler returned a value that is not JSON ({kind}): {detail}",
    JsonRefusal.TOO_DEEP: "the handler returned a value nested too deeply to store as JSON",
    JsonRefusal.NUL: "the handler's result contains a NUL character (\\u0000), which cannot be stored",
    JsonRefusal.LONE_SURROGATE: (
        "the handler's result is not valid Unicode (it holds a lone surrogate such as \\udc80)"
    ),
    JsonRefusal.TOO_LARGE: (
        "the handler's result is {size} bytes, over the limit of {max_bytes} (SCHED_MAX_PAYLOAD_BYTES)"
    ),
}


def encode_result(value: Any, max_bytes: int) -> str:
    """A handler's result as JSON text, or UnstorableResult saying why PostgreSQL could not store it."""
    text = encode_json(value, max_bytes)
    if isinstance(text, str):
        return text
    message = _RESULT_REFUSALS[text.why]
    raise UnstorableResult(
        message.format(kind=type(value).__name__, detail=text.detail, size=text.size, max_bytes=max_bytes)
    ) from None


def storable_text(text: str) -> str:
    """Error text PostgreSQL can store: NUL characters and lone surrogates written as escapes, at most
    MAX_ERROR_CHARS long."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text[:MAX_ERROR_CHARS]


def _outcome(job: ClaimedJob, kind: OutcomeKind, **fields: Any) -> Outcome:
    return Outcome(job.id, job.lease, kind, **fields)


def _failed(end: RunEnd, error: str, **fields: Any) -> Outcome:
    return _outcome(
        end.job,
        OutcomeKind.FAILED,
        error=error,
        backoff_base_s=end.spec.backoff_base_s,
        backoff_cap_s=end.spec.backoff_cap_s,
        **fields,
    )


def _summary(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not cost the job its outcome
        message = "(its message could not be read)"
    return f"{type(exc).__name__}: {message}"


def _handler_failure(end: RunEnd, exc: BaseException) -> Outcome:
    summary = _summary(exc)
    # A handler that raised Fail or Retry decided: its message is the whole story, no traceback needed.
    if isinstance(exc, (Fail, Retry)):
        error = summary
    else:
        error = summary + "\n" + "".join(traceback.format_exception(exc)[-6:])
    return _failed(
        end,
        storable_text(error),
        retryable=not isinstance(exc, Fail),
        retry_after_s=exc.after_s if isinstance(exc, Retry) else None,
    )


def log_outcome(end: RunEnd, outcome: Outcome, *, debug: bool) -> None:
    """The log line of a run's end: failures and cancellations always, successes with -v."""
    job = end.job
    if outcome.kind is _SUCCEEDED:
        if debug:
            logger.bind(job_id=job.id).debug("job {} {} succeeded", job.id, job.task)
        return
    log = logger.bind(job_id=job.id)
    if outcome.kind is OutcomeKind.CANCELLED:
        log.info("job {} {} cancelled on request", job.id, job.task)
    elif outcome.kind is OutcomeKind.FAILED:
        if end.stopped is StopReason.TIMEOUT or end.error is None:
            log.warning("job {} {} {}", job.id, job.task, outcome.error)
            return
        exc = end.error
        if isinstance(exc, Fail):
            verdict = " (no retry)"
        elif isinstance(exc, Retry):
            verdict = f" (retry asked in {exc.after_s:g}s)"
        else:
            verdict = ""
        log.warning(
            "job {} {} failed on attempt {}/{}{}: {}",
            job.id,
            job.task,
            job.attempt,
            job.max_attempts,
            verdict,
            storable_text(_summary(exc)),
        )


def _transient(exc: BaseException) -> bool:
    """Whether a failed write says the database is busy (try the same outcomes later) rather than that an
    outcome is bad (isolate it). The SQLSTATE is that of the driver's error the SchedError was raised from."""
    if not isinstance(exc, DatabaseError):
        return False
    sqlstate = getattr(exc.__context__, "sqlstate", None)
    return sqlstate is None or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SchedError) else _summary(exc)


class OutcomeBuffer:
    """Outcomes waiting to be written, and the one writer on the outcome connection: batches of outcomes (by
    the flusher, a burst drain or shutdown) and progress reports, one transaction at a time."""

    def __init__(
        self,
        link: Link,
        worker_id: str,
        config: WorkerConfig,
        on_retry_due: Callable[[str, float], None],
        metrics: Any | None = None,
    ) -> None:
        self._link = link
        self._worker_id = worker_id
        self._config = config
        self._on_retry_due = on_retry_due
        self._metrics = metrics
        self._pending: list[Outcome] = []
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        # Ids of the outcomes a flush that splits its batch has settled (written, or given up), so a connection
        # lost halfway hands back only the rest.
        self._settled: set[int] = set()
        # Called after each batch is written while a queue of this worker caps its running jobs: the runs that
        # ended free slots its claims count (set by the fetcher).
        self.on_runs_ended: Callable[[], None] | None = None

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._pending)

    def forget(self, lease: int) -> None:
        """Drop the unwritten outcomes of the run that held ``lease`` (its claim no longer exists)."""
        self._pending = [o for o in self._pending if o.lease != lease]

    async def run(self) -> None:
        """The flusher: write outcomes as they come, a few milliseconds' worth per statement."""
        config = self._config
        while True:
            if not self._pending:
                self._ready.clear()
                await self._ready.wait()
            if len(self._pending) < config.flush_size:
                # Let a few milliseconds of outcomes gather into one statement.
                await asyncio.sleep(config.flush_interval)
            await self.flush_once()

    async def flush_once(self) -> bool:
        """Write the buffered outcomes; on failure keep them for the next try. True when written."""
        # One transaction at a time on the outcome connection: the flusher, a burst drain and shutdown share it.
        async with self._lock:
            if not self._pending:
                return True
            # At most flush_size per statement: a bounded statement is planned and run in a bounded time, and
            # the flusher comes straight back for the rest.
            size = self._config.flush_size
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._settled.clear()
            try:
                conn = await self._link.get()
                again = await self._write(conn, batch)
            except DatabaseUnavailable:
                self._pending[:0] = [o for o in batch if id(o) not in self._settled]
                await self._link.lost()
                return False
            finally:
                self._settled.clear()
            if again:
                self._pending[:0] = again
                await asyncio.sleep(0.5)
                return False
            return True

    async def flush_all(self, timeout: float | None) -> bool:
        """Flush until the buffer is empty, giving up after ``timeout`` seconds (None: keep trying)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            async with self._lock:  # also waits out a flush in progress, which may hand its batch back
                if not self._pending:
                    return True
            if deadline is not None and time.monotonic() > deadline:
                logger.error(
                    "{} outcome(s) could not be written; the reaper will requeue those jobs", len(self._pending)
                )
                return False
            if not await self.flush_once():
                await asyncio.sleep(0.2)

    async def _write(self, conn: AsyncConnection, batch: list[Outcome]) -> list[Outcome]:
        """Write ``batch`` in one transaction; returns the outcomes to try again later. When the database
        refuses the batch for its content, halves are written apart until the refused outcome is alone, so one
        bad outcome never holds back the others."""
        started = time.perf_counter()
        try:
            result = await repository.record_outcomes(conn, self._worker_id, batch)
        except DatabaseUnavailable:
            raise
        except (SchedError, UnicodeError) as exc:
            if _transient(exc):
                logger.error("writing {} outcome(s) failed: {}; will retry", len(batch), _reason(exc))
                return batch
            if len(batch) > 1:
                middle = len(batch) // 2
                again: list[Outcome] = []
                for part in (batch[:middle], batch[middle:]):
                    unwritten = await self._write(conn, part)
                    # Written for good: a lost connection later in this flush must not hand these back.
                    kept = {id(o) for o in unwritten}
                    self._settled.update(id(o) for o in part if id(o) not in kept)
                    again += unwritten
                return again
            return await self._write_failure_instead(conn, batch[0], exc)
        self._written(batch, result, time.perf_counter() - started)
        return []

    async def _write_failure_instead(
        self, conn: AsyncConnection, outcome: Outcome, exc: BaseException
    ) -> list[Outcome]:
        """Fail the job of an outcome the database refused, saying why; the rest of its batch is unaffected."""
        reason = _reason(exc)
        log = logger.bind(job_id=outcome.job_id)
        log.error("the outcome of job {} could not be stored: {}; failing the job instead", outcome.job_id, reason)
        instead = Outcome(
            outcome.job_id,
            outcome.lease,
            OutcomeKind.FAILED,
            error=storable_text(f"the outcome could not be stored: {reason}"),
            backoff_base_s=outcome.backoff_base_s,
            backoff_cap_s=outcome.backoff_cap_s,
        )
        started = time.perf_counter()
        try:
            result = await repository.record_outcomes(conn, self._worker_id, [instead])
        except DatabaseUnavailable:
            raise
        except (SchedError, UnicodeError) as again:
            if _transient(again):
                return [outcome]
            log.error(
                "job {}: not even its failure could be stored ({}); the reaper will take the job back",
                outcome.job_id,
                _reason(again),
            )
            self._settled.add(id(outcome))
            return []
        self._settled.add(id(outcome))
        self._written([instead], result, time.perf_counter() - started)
        return []

    def _written(self, batch: list[Outcome], result: repository.RecordResult, seconds: float) -> None:
        if result.fenced:
            logger.warning(
                "{} late outcome(s) fenced off (jobs {}): another run owns them now",
                len(result.fenced),
                ", ".join(str(i) for i in result.fenced[:10]),
            )
        for queue, epoch in result.retry_due:
            self._on_retry_due(queue, epoch)
        if self._metrics is not None:
            self._metrics.flushed(batch, result, seconds)
        if self.on_runs_ended is not None:
            self.on_runs_ended()

    async def write_progress(self, reports: list[tuple[int, int, str]]) -> None:
        """Store progress reports (job id, lease, JSON text) of running jobs."""
        # A statement or lock timeout, say, is logged and forgotten: progress is a hint that the next report
        # replaces; what must not happen is such an error ending the executor's watch over timeouts.
        async with self._lock, self._link.attempt("writing progress"):
            conn = await self._link.get()
            for job_id, lease, text in reports:
                if not await repository.set_progress(conn, self._worker_id, job_id, lease, text):
                    logger.bind(job_id=job_id).warning("progress of job {} fenced off", job_id)
