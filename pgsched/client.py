"""The Python API for producers: ``Client(...).enqueue(...)``, on sched's own connection or inside the
caller's psycopg transaction, so a job exists (and workers are woken) only if that transaction commits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pgsched.durations import MAX_DELAY_S, to_seconds
from pgsched.errors import InvalidInput
from pgsched.models import (
    Enqueued,
    NewJob,
    check_key,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task,
    check_timeout,
    encode_payload,
)

if TYPE_CHECKING:
    import psycopg

    from pgsched.db import Connection

__all__ = ["Client", "Enqueued"]

_JOB_FIELDS = {"task", "payload", "queue", "priority", "delay", "run_at", "max_attempts", "timeout", "key", "after"}
# Distinct shapes remembered per enqueue_many call (jobs with a key of their own each make one).
_MAX_SHAPES = 1024
_SHAPE_TYPES = frozenset({str, int, float, bool, type(None), datetime, timedelta})


def _job_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidInput(f"invalid job id {value!r}: a positive integer")
    return value


class Client:
    """Adds jobs. Give ``dsn`` (or nothing: SCHED_DATABASE_URL, else the embedded server) for a connection of
    the client's own, where each call commits; or ``conn``, a psycopg connection, to enqueue inside its
    current transaction."""

    def __init__(self, dsn: str | None = None, *, conn: psycopg.Connection | None = None, durable: bool = True) -> None:
        """``durable=False`` (own connection only) commits without waiting for the WAL flush: one producer adds
        jobs several times faster, and an operating-system crash may lose the last moment of added jobs
        (never half a job: PostgreSQL stays consistent). Jobs are never lost by a worker crash either way."""
        from pgsched.settings import load_settings

        if dsn is not None and conn is not None:
            raise InvalidInput("give dsn or conn, not both")
        if conn is not None and not durable:
            raise InvalidInput("durable=False applies to the client's own connection, not to one you pass in")
        settings = load_settings()
        self.max_payload_bytes: int = settings.max_payload_bytes
        self.default_max_attempts: int = settings.max_attempts
        self.default_timeout_s: float = settings.job_timeout
        self._owned = conn is None
        self._durable = durable
        if conn is not None:
            from pgsched.db import wrap

            self._conn: Connection = wrap(conn)
        else:
            from pgsched.settings import resolve_dsn

            self._dsn = dsn if dsn is not None else resolve_dsn(settings)
            self._conn = self._connect()

    def _connect(self) -> Connection:
        from pgsched.db import connect

        conn = connect(self._dsn, application_name="sched-client")
        if not self._durable:
            from pgsched.sqlfiles import query

            conn.run(query("SessionCommitWithoutFlushWait"))
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
        queue: str = "default",
        priority: int = 0,
        delay: float | timedelta | str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | str | None = None,
        key: str | None = None,
        after: Sequence[int] = (),
    ) -> Enqueued:
        """Add one job and return its id (``.id``); with ``key``, a live job of the same queue and key is
        returned instead, marked ``.deduplicated``."""
        from pgsched import repository

        job = self._job(
            task=task,
            payload=payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            key=key,
            after=after,
        )
        self._join_transaction()
        return repository.enqueue(self._conn, job)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Add many jobs, all or nothing, in order; each is a mapping of ``enqueue``'s arguments (``task``
        required). Without dependencies they go in through one COPY."""
        from pgsched import repository

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
            if template is None:
                template = self._checked(number, rest)
                if shape is not None and len(shapes) < _MAX_SHAPES:
                    shapes[shape] = template
            if payload is None:
                built.append(template)
                continue
            try:
                payload_json = self._payload_json(payload)
            except InvalidInput as exc:
                raise InvalidInput(f"job {number}: {exc.message}") from None
            built.append(template.with_payload(payload_json))
        self._join_transaction()
        if not any(job.after for job in built):
            return repository.enqueue_many(self._conn, built)
        with self._conn.transaction():
            return [repository.enqueue(self._conn, job) for job in built]

    def get(self, job_id: int) -> dict[str, Any]:
        """One job as ``sched status ID --json`` shows it (``state``, ``attempt``, ``result``, ``error``,
        ``progress``, times...), without ``why``; ``NotFound`` if there is no such job."""
        from pgsched import repository

        self._reconnect_if_lost()
        return repository.get_job(self._conn, _job_id(job_id))

    def cancel(self, job_id: int) -> str:
        """Cancel a waiting or queued job and its dependents: returns ``"cancelled"``. For a running job, ask its
        worker to stop it: returns ``"running"``. A finished job raises ``WrongState``, an unknown one
        ``NotFound``. On a caller's connection, it takes effect when that transaction commits."""
        from pgsched import repository

        job_id = _job_id(job_id)
        self._join_transaction()
        return repository.cancel_job(self._conn, job_id).state

    def retry(self, job_id: int) -> str:
        """Give a failed or cancelled job a fresh attempt budget: returns ``"queued"``, or ``"waiting"`` while
        its dependencies run. ``WrongState`` says why a job cannot be retried, ``NotFound`` that it does not
        exist."""
        from pgsched import repository

        job_id = _job_id(job_id)
        self._join_transaction()
        result = repository.retry_job(self._conn, job_id)
        return "queued" if result.queued else "waiting"

    def _checked(self, number: int, spec: dict[str, Any]) -> NewJob:
        """A job built from one mapping of ``enqueue``'s arguments (without its payload), or a numbered error."""
        if not _JOB_FIELDS.issuperset(spec):
            unknown = sorted(set(spec) - _JOB_FIELDS)
            raise InvalidInput(f"job {number}: unknown field {unknown[0]!r}")
        if "task" not in spec:
            raise InvalidInput(f"job {number}: missing task")
        try:
            return self._job(**spec)
        except InvalidInput as exc:
            raise InvalidInput(f"job {number}: {exc.message}") from None

    def _job(
        self,
        *,
        task: str,
        payload: Mapping[str, Any] | None = None,
        queue: str = "default",
        priority: int = 0,
        delay: float | timedelta | str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | str | None = None,
        key: str | None = None,
        after: Sequence[int] = (),
    ) -> NewJob:
        if delay is not None and run_at is not None:
            raise InvalidInput("use delay or run_at, not both")
        if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
            raise InvalidInput("run_at must be a timezone-aware datetime")
        delay_s = to_seconds(delay, "delay") if delay is not None else None
        if delay_s is not None and not 0 <= delay_s <= MAX_DELAY_S:
            raise InvalidInput(f"invalid delay {delay!r}: from 0 to a year")
        after_ids = list(after) if after else []
        if after_ids and any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in after_ids):
            raise InvalidInput(f"after must hold job ids, not {after_ids!r}")
        payload_json = "{}" if payload is None else self._payload_json(payload)
        return NewJob(
            task=check_task(task),
            payload_json=payload_json,
            queue=check_queue(queue),
            priority=check_priority(priority),
            delay_s=delay_s,
            run_at=run_at,
            max_attempts=check_max_attempts(self.default_max_attempts if max_attempts is None else max_attempts),
            timeout_s=check_timeout(self.default_timeout_s if timeout is None else to_seconds(timeout, "timeout")),
            key=check_key(key),
            after=after_ids,
        )

    def _payload_json(self, payload: Any) -> str:
        plain = payload if isinstance(payload, dict) else dict(payload) if isinstance(payload, Mapping) else payload
        return encode_payload(plain, self.max_payload_bytes)

    def _join_transaction(self) -> None:
        self._reconnect_if_lost()
        # A non-autocommit connection opens its transaction with its first statement. Open it now, so that
        # sched's block becomes a savepoint inside the caller's transaction instead of one that commits.
        if not self._owned:
            from pgsched.db import begin_implicit

            begin_implicit(self._conn)

    def close(self) -> None:
        """Close the client's own connection (a caller's connection is left open)."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
