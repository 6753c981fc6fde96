"""The Python API for producers: ``Client(...).enqueue(...)``, on sched's own connection or inside the
caller's psycopg transaction, so a job exists (and workers are woken) only if that transaction commits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pgsched import repository, tracing
from pgsched.db import Connection, begin_implicit, connect, wrap
from pgsched.errors import InvalidInput
from pgsched.jobspec import API, JobDefaults, build_job, payload_json
from pgsched.models import Enqueued, NewJob
from pgsched.settings import load_settings, resolve_dsn

if TYPE_CHECKING:
    import psycopg

__all__ = ["Client", "Enqueued", "enqueue_jobs"]

# Distinct shapes remembered per enqueue_many call (jobs with a key of their own each make one).
_MAX_SHAPES = 1024
_SHAPE_TYPES = frozenset({str, int, float, bool, type(None), datetime, timedelta})


def _job_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidInput(f"invalid job id {value!r}: a positive integer")
    return value


def enqueue_jobs(conn: Connection, jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert built jobs (``sched add``'s), all or nothing, in order: one COPY when none has dependencies, else one
    by one. Under a valid TRACEPARENT environment variable (OpenTelemetry's environment carrier), jobs without a
    trace context of their own record it and TRACESTATE (README, "Tracing")."""
    context = tracing.environment_context()
    if context is not None:
        jobs = [job if job.trace_context is not None else replace(job, trace_context=context) for job in jobs]
    return _insert(conn, jobs)


def _insert(conn: Connection, jobs: Sequence[NewJob]) -> list[Enqueued]:
    if len(jobs) == 1:
        return [repository.enqueue(conn, jobs[0])]
    if not any(job.after for job in jobs):
        return repository.enqueue_many(conn, jobs)
    with conn.transaction():
        return [repository.enqueue(conn, job) for job in jobs]


class Client:
    """Adds jobs. Give ``dsn`` (or nothing: SCHED_DATABASE_URL, else the embedded server) for a connection of
    the client's own, where each call commits; or ``conn``, a psycopg connection, to enqueue inside its
    current transaction."""

    def __init__(self, dsn: str | None = None, *, conn: psycopg.Connection | None = None, durable: bool = True) -> None:
        """``durable=False`` (own connection only) commits without waiting for the WAL flush: one producer adds
        jobs several times faster, and an operating-system crash may lose the last moment of added jobs
        (never half a job: PostgreSQL stays consistent). Jobs are never lost by a worker crash either way."""
        if dsn is not None and conn is not None:
            raise InvalidInput("give dsn or conn, not both")
        if conn is not None and not durable:
            raise InvalidInput("durable=False applies to the client's own connection, not to one you pass in")
        settings = load_settings()
        self.defaults = JobDefaults.from_settings(settings)
        self._owned = conn is None
        self._durable = durable
        if conn is not None:
            self._conn: Connection = wrap(conn)
        else:
            self._dsn = dsn if dsn is not None else resolve_dsn(settings)
            self._conn = self._connect()

    def _connect(self) -> Connection:
        conn = connect(self._dsn, application_name="sched-client")
        # Behind a transaction pooler a session setting would stay with a server connection that other clients
        # then use: there each of the client's transactions sets it for itself.
        if not self._durable and conn.pooled:
            conn.commit_level_each_transaction("off")
        elif not self._durable:
            repository.commit_without_flush_wait(conn)
        return conn

    def _reconnect_if_lost(self) -> None:
        # The client's own connection, once lost (a server restart, a failover), is opened again on the next
        # call, so a long-lived producer with a multi-host URL finds the new primary by itself. The call that
        # met the loss raised DatabaseUnavailable: whether its commit happened is unknown (a key makes the
        # repeat safe). A caller's connection is the caller's to replace.
        if self._owned and self._conn.lost:
            self._conn.close()
            self._conn = self._connect()

    def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | str | None = None,
        run_at: datetime | str | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | str | None = None,
        key: str | None = None,
        after: Sequence[int] = (),
        group: str | None = None,
    ) -> Enqueued:
        """Add one job and return its id (``.id``); with ``key``, a live job of the same queue and key is
        returned instead, marked ``.deduplicated``. Unset options take their defaults: queue ``default``,
        priority 0, SCHED_MAX_ATTEMPTS attempts, a SCHED_JOB_TIMEOUT timeout. Inside an OpenTelemetry trace the
        job records the trace context, and its runs' spans join that trace (README, "Tracing")."""
        spec = {
            "task": task,
            "payload": payload,
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "run_at": run_at,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "key": key,
            "after": after,
            "group": group,
        }
        job = build_job(spec, self._defaults_in_trace(), API)
        self._join_transaction()
        return repository.enqueue(self._conn, job)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Add many jobs, all or nothing, in order; each is a mapping of ``enqueue``'s arguments (``task``
        required). Without dependencies they go in through one COPY."""
        defaults = self._defaults_in_trace()
        built = []
        # A bulk insert repeats a few shapes (task, queue, options) with many payloads: each shape is checked
        # once, and the jobs that share it differ only in their payload.
        shapes: dict[tuple, NewJob] = {}
        for number, spec in enumerate(jobs, start=1):
            if not isinstance(spec, dict):
                if not isinstance(spec, Mapping):
                    raise InvalidInput(f"job {number}: must be a mapping of enqueue's arguments")
                spec = dict(spec)
            payload = spec.get("payload")
            rest = {k: v for k, v in spec.items() if k != "payload"} if "payload" in spec else spec
            # The key holds each value's type too: 1, 1.0 and True are equal, and only one of them is valid.
            # Values of other types (a sequence for after=) are checked job by job.
            types = tuple(map(type, rest.values()))
            shape = (tuple(rest.items()), types) if _SHAPE_TYPES.issuperset(types) else None
            template = shapes.get(shape) if shape is not None else None
            try:
                if template is None:
                    template = build_job(rest, defaults, API)
                    if shape is not None and len(shapes) < _MAX_SHAPES:
                        shapes[shape] = template
                if payload is not None:
                    template = template.with_payload(payload_json(payload, self.defaults.max_payload_bytes))
            except InvalidInput as exc:
                raise InvalidInput(f"job {number}: {exc.message}") from None
            built.append(template)
        self._join_transaction()
        return _insert(self._conn, built)

    def _defaults_in_trace(self) -> JobDefaults:
        # Inside a trace, the jobs of this call record its context, so their runs join it (README, "Tracing").
        context = tracing.producer_context()
        return self.defaults if context is None else replace(self.defaults, trace_context=context)

    def get(self, job_id: int) -> dict[str, Any]:
        """One job as ``sched status ID --json`` shows it (``state``, ``attempt``, ``result``, ``error``,
        ``progress``, times, ``trace_context``...), without ``why``; ``NotFound`` if there is no such job."""
        self._reconnect_if_lost()
        return repository.get_job(self._conn, _job_id(job_id))

    def cancel(self, job_id: int) -> str:
        """Cancel a waiting or queued job and its dependents: returns ``"cancelled"``. For a running job, ask its
        worker to stop it: returns ``"running"``. A finished job raises ``WrongState``, an unknown one
        ``NotFound``. On a caller's connection, it takes effect when that transaction commits."""
        job_id = _job_id(job_id)
        self._join_transaction()
        return repository.cancel_job(self._conn, job_id).state

    def retry(self, job_id: int) -> str:
        """Give a failed or cancelled job a fresh attempt budget: returns ``"queued"``, or ``"waiting"`` while
        its dependencies run. ``WrongState`` says why a job cannot be retried, ``NotFound`` that it does not
        exist."""
        job_id = _job_id(job_id)
        self._join_transaction()
        result = repository.retry_job(self._conn, job_id)
        return "queued" if result.queued else "waiting"

    def _join_transaction(self) -> None:
        self._reconnect_if_lost()
        # A non-autocommit connection opens its transaction with its first statement. Open it now, so that
        # sched's block becomes a savepoint inside the caller's transaction instead of one that commits.
        if not self._owned:
            begin_implicit(self._conn)

    def close(self) -> None:
        """Close the client's own connection (a caller's connection is left open)."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
