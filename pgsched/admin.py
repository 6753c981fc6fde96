"""Operator actions that are more than one repository call: deleting finished jobs in batches, setting a queue's
limits in one transaction, and reaping from outside a worker."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from pgsched import migrate, repository, roles
from pgsched.db import Connection, connect_async
from pgsched.durations import parse_duration, parse_rate
from pgsched.errors import InvalidInput
from pgsched.models import check_queue
from pgsched.repository import history
from pgsched.settings import Settings, resolve_dsn


@dataclass
class Migrated:
    """What ``migrate`` did: the migrations applied, and whether the group roles were granted afresh."""

    applied: list[migrate.Migration]
    granted: bool
    # The installation's group roles (suffixed with its schema outside public).
    roles: tuple[str, str] = ("sched_producer", "sched_worker")


def apply_migrations(conn: Connection, *, grant_roles: bool = False) -> Migrated:
    """Apply pending migrations; grant the group roles when asked, or when they exist and tables were added
    (tables that new migrations add get their grants without being asked)."""
    done = migrate.apply(conn)
    granted = grant_roles or (bool(done) and roles.installed(conn))
    if granted:
        roles.apply_roles(conn)
    return Migrated(done, granted, roles.names())


@dataclass
class CleanupReport:
    """What a cleanup deleted (or, dry, would delete), by state, how many history slots it emptied (or would),
    and how fast."""

    dry_run: bool
    deleted: int
    would_delete: int
    succeeded: int
    failed: int
    cancelled: int
    slots_emptied: int
    seconds: float
    rows_per_s: int | None

    def as_json(self) -> dict[str, Any]:
        """The report as plain data for ``--json``."""
        return asdict(self)


def older_than(text: str | None) -> float | None:
    """Parse ``--older-than`` (None keeps SCHED_RETENTION); a cleanup of everything finished is refused here,
    naming the option, rather than by the retention setting it overrides."""
    if text is None:
        return None
    seconds = parse_duration(text, what="--older-than")
    if seconds <= 0:
        raise InvalidInput(f"invalid --older-than {text!r}: must be more than 0")
    return seconds


# The slot that takes new succeeded jobs is moved on once it holds a job older than this share of the retention:
# a slot is emptied once its newest job is past the retention, so a job stays at most about this much longer.
SLOT_SHARE = 8


def cleanup(
    conn: Connection, older_than_s: float, batch_size: int, *, dry_run: bool = False, exact: bool = False
) -> CleanupReport:
    """Delete jobs that finished more than ``older_than_s`` ago (or, with ``dry_run``, only count them).

    Failed and cancelled jobs (and succeeded ones recorded before the history existed) are deleted
    ``batch_size`` rows per transaction, so that a large cleanup never holds locks or a long transaction.
    Succeeded jobs are in the history (docs/design.md, "History and cleanup"): a slot whose every job is past
    the retention is emptied at once with TRUNCATE, so a succeeded job may stay until the rest of its slot is
    past it too (about 1/SLOT_SHARE of the retention longer, with cleanup running at least that often);
    ``exact`` also deletes, row by row, those of its jobs that are past it."""
    started = time.perf_counter()
    if dry_run:
        counts = repository.count_finished(conn, older_than_s)
        emptied = _history_plan(conn, older_than_s)
        # With --exact every succeeded job past the retention goes, whichever slot holds it.
        counts.succeeded += (
            history.count_before(conn, older_than_s)
            if exact
            else sum(history.count_slot(conn, slot) for slot in emptied)
        )
    else:
        counts = repository.CleanupCounts()
        while True:
            batch = repository.delete_finished_batch(conn, older_than_s, batch_size)
            counts.succeeded += batch.succeeded
            counts.failed += batch.failed
            counts.cancelled += batch.cancelled
            if batch.total < batch_size:
                break
        emptied, held = empty_history_slots(conn, older_than_s)
        counts.succeeded += held
        while exact:
            deleted = history.delete_before_batch(conn, older_than_s, batch_size)
            counts.succeeded += deleted
            if deleted < batch_size:
                break
    elapsed = time.perf_counter() - started
    return CleanupReport(
        dry_run=dry_run,
        deleted=0 if dry_run else counts.total,
        would_delete=counts.total if dry_run else 0,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cancelled=counts.cancelled,
        slots_emptied=len(emptied),
        seconds=round(elapsed, 3),
        rows_per_s=round(counts.total / elapsed) if elapsed > 0 and not dry_run else None,
    )


def _history_plan(conn: Connection, older_than_s: float) -> list[int]:
    """The slots a cleanup would empty now (for a dry run): the one taking new rows too when it would move on."""
    found, now = history.slots(conn)
    return _past_retention(found, now, older_than_s, current_too=_next_slot(found, now, older_than_s) is not None)


def _past_retention(found: list[history.Slot], now: datetime, older_than_s: float, *, current_too: bool) -> list[int]:
    """The slots whose every job is past the retention, leaving out the one taking new rows unless
    ``current_too`` (it is emptied only once it has moved on)."""
    cutoff = now - timedelta(seconds=older_than_s)
    return [s.number for s in found if s.newest is not None and s.newest < cutoff and (current_too or not s.current)]


def _next_slot(found: list[history.Slot], now: datetime, older_than_s: float) -> int | None:
    """The slot to take new rows next, if the current one holds a job older than its share of the retention and
    the next one is empty; else None."""
    current = next(s for s in found if s.current)
    if current.oldest is None or current.oldest > now - timedelta(seconds=older_than_s / SLOT_SHARE):
        return None
    following = found[(current.number + 1) % len(found)]
    return following.number if following.oldest is None else None


def empty_history_slots(conn: Connection, older_than_s: float) -> tuple[list[int], int]:
    """Move the slot that takes new rows on when it is due, then empty every other slot whose jobs are all past
    the retention; returns the slots emptied and how many jobs they held."""
    found, now = history.slots(conn)
    following = _next_slot(found, now, older_than_s)
    if following is not None:
        current = next(s for s in found if s.current)
        if history.rotate(conn, current.number, following):
            found, now = history.slots(conn)
    emptied, total = [], 0
    for slot in _past_retention(found, now, older_than_s, current_too=False):
        held = history.truncate(conn, slot, older_than_s)
        if held is not None:
            emptied.append(slot)
            total += held
    return emptied, total


@dataclass(frozen=True)
class QueueLimits:
    """A change to a queue's limits: a rate (jobs per second; None removes it) with its burst, a backlog cap, the
    most running jobs in all and per group (0 removes a concurrency limit), each group's rate with its burst,
    and fair sharing between groups."""

    set_rate: bool = False
    rate: float | None = None
    burst: int | None = None
    set_max_backlog: bool = False
    max_backlog: int | None = None
    set_max_running: bool = False
    max_running: int | None = None
    set_group_concurrency: bool = False
    group_concurrency: int | None = None
    set_group_rate: bool = False
    group_rate: float | None = None
    group_burst: int | None = None
    fair: bool | None = None

    @classmethod
    def parse(
        cls,
        rate: str | None = None,
        burst: int | None = None,
        max_backlog: int | None = None,
        clear: bool = False,
        *,
        max_running: int | None = None,
        group_concurrency: int | None = None,
        group_rate: str | None = None,
        group_burst: int | None = None,
        fair: bool | None = None,
    ) -> QueueLimits:
        """The change that ``sched queue limit`` options ask for (``--rate 100/s``, ``30/m`` or ``none``;
        ``--max-running 0``, ``--group-concurrency 0`` and ``--group-rate 0`` remove those limits)."""
        given = (rate, burst, max_backlog, max_running, group_concurrency, group_rate, group_burst, fair)
        if clear and any(value is not None for value in given):
            raise InvalidInput(
                "--clear cannot be combined with --rate, --burst, --max-backlog, --max-running, --group-concurrency, "
                "--group-rate, --group-burst or --fair/--no-fair"
            )
        if clear:
            return cls(
                set_rate=True,
                set_max_backlog=True,
                set_max_running=True,
                set_group_concurrency=True,
                set_group_rate=True,
                fair=True,
            )
        if all(value is None for value in given):
            raise InvalidInput(
                "give --rate, --max-backlog, --max-running, --group-concurrency, --group-rate, --fair/--no-fair "
                "or --clear"
            )
        for name, value in (("--max-running", max_running), ("--group-concurrency", group_concurrency)):
            if value is not None and not 0 <= value <= 1_000_000:
                raise InvalidInput(f"invalid {name} {value}: from 1 to 1000000, or 0 to remove the limit")
        no_rate = rate is None or rate.strip().lower() == "none"
        if burst is not None and no_rate:
            raise InvalidInput("--burst needs --rate")
        no_group_rate = group_rate is None or group_rate.strip().lower() in ("none", "0")
        if group_burst is not None and no_group_rate:
            raise InvalidInput("--group-burst needs --group-rate")
        if group_burst is not None and not 1 <= group_burst <= 1_000_000:
            raise InvalidInput(f"invalid --group-burst {group_burst}: from 1 to 1000000")
        try:
            per_group = None if group_rate is None or no_group_rate else parse_rate(group_rate)
        except InvalidInput as exc:
            raise InvalidInput(f"--group-rate: {exc.message}") from None
        return cls(
            set_rate=rate is not None,
            rate=None if rate is None or no_rate else parse_rate(rate),
            burst=burst,
            set_max_backlog=max_backlog is not None,
            max_backlog=max_backlog,
            set_max_running=max_running is not None,
            max_running=max_running or None,
            set_group_concurrency=group_concurrency is not None,
            group_concurrency=group_concurrency or None,
            set_group_rate=group_rate is not None,
            group_rate=per_group,
            group_burst=group_burst,
            fair=fair,
        )


def set_queue_limits(conn: Connection, queue: str, limits: QueueLimits) -> None:
    """Apply ``limits`` to ``queue`` in one transaction."""
    check_queue(queue)
    with conn.transaction():
        if limits.set_rate:
            repository.set_queue_rate(conn, queue, limits.rate, limits.burst)
        if limits.set_max_backlog:
            repository.set_queue_max_backlog(conn, queue, limits.max_backlog)
        if limits.set_max_running or limits.set_group_concurrency:
            repository.set_queue_concurrency(
                conn,
                queue,
                max_running=limits.max_running,
                group_concurrency=limits.group_concurrency,
                set_max_running=limits.set_max_running,
                set_group_concurrency=limits.set_group_concurrency,
            )
        if limits.set_group_rate:
            repository.set_queue_group_rate(conn, queue, limits.group_rate, limits.group_burst)
        if limits.fair is not None:
            repository.set_queue_fair(conn, queue, limits.fair)


def reap(settings: Settings) -> repository.ReapResult:
    """Requeue the jobs of dead workers and overdue runs now, as a worker's reaper does, waiting for locks; each
    worker is judged by the stale-after and grace it registered (docs/protocol.md)."""

    async def run() -> repository.ReapResult:
        conn = await connect_async(resolve_dsn(settings), application_name="sched-reap")
        try:
            return await repository.reap_stale(conn, wait=True)
        finally:
            await conn.close()

    return asyncio.run(run())
