"""Bulk retry, cancel and purge: the jobs a filter matches, previewed (a count and a sample) or acted on in short
batches, each its own transaction (``repository.retry_batch``, ``cancel_batch``, ``purge_batch``). Used by
``sched retry``, ``sched cancel`` and ``sched purge`` with filters, and by the dashboard's bulk form."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pgsched import repository
from pgsched.db import Connection
from pgsched.durations import parse_duration
from pgsched.errors import InvalidInput
from pgsched.models import JobState, check_group, check_key, check_queue, check_task
from pgsched.repository.bulk import FIRST_ID, LAST_ID, JobFilter

__all__ = ["ACTS_ON", "BulkReport", "JobFilter", "build_filter", "filters_given", "perform", "preview", "summary"]

# The states each action may act on (docs/protocol.md, "Bulk actions").
ACTS_ON = {
    "retry": ("failed", "cancelled"),
    "cancel": ("waiting", "queued", "running"),
    "purge": ("succeeded", "failed", "cancelled"),
}
DEFAULT_BATCH = 500
SAMPLE = 5
# Entries of the primary key one batch examines at most: a batch of sparse matches stays short.
WALK_PER_BATCH = 20


def filters_given(options: dict[str, Any]) -> bool:
    """Whether any of ``build_filter``'s options is set: a bulk action needs at least one."""
    return any(value not in (None, [], ()) for value in options.values())


def build_filter(
    action: str,
    *,
    states: list[str] | None = None,
    queue: str | None = None,
    task: str | None = None,
    group: str | None = None,
    key: str | None = None,
    error_like: str | None = None,
    since: str | None = None,
) -> JobFilter:
    """The filter that these options ask for; InvalidInput (exit 2) for a bad value or a state ``action`` cannot
    act on. Without ``states`` it matches every state the action acts on."""
    allowed = ACTS_ON[action]
    chosen: list[str] = []
    for state in states or []:
        if state not in {s.value for s in JobState}:
            raise InvalidInput(f"invalid --state {state!r}: one of {', '.join(s.value for s in JobState)}")
        if state not in allowed:
            raise InvalidInput(f"{action} cannot act on {state} jobs: it acts on {_listed(allowed)} jobs")
        if state not in chosen:
            chosen.append(state)
    if error_like is not None and (not error_like.strip() or "\x00" in error_like):
        raise InvalidInput("invalid --error-like: give some text (and no NUL character)")
    since_s = None
    if since is not None:
        since_s = parse_duration(since, what="--since")
        if since_s <= 0:
            raise InvalidInput(f"invalid --since {since!r}: must be more than 0")
    return JobFilter(
        states=tuple(chosen or allowed),
        queue=None if queue is None else check_queue(queue),
        task=None if task is None else check_task(task),
        group=None if group is None else check_group(group),
        key=None if key is None else check_key(key),
        error_like=error_like,
        since_s=since_s,
    )


def _listed(states: tuple[str, ...]) -> str:
    return ", ".join(states[:-1]) + " and " + states[-1] if len(states) > 1 else states[0]


@dataclass
class BulkReport:
    """What a bulk action matched and changed (or, dry, would act on), with a sample of the matches."""

    action: str
    dry_run: bool
    matched: int
    changed: int = 0
    # retry: back in the queue, and waiting on dependencies; jobs it could not revive (a failed or cancelled
    # dependency, or a dedupe key a live job holds).
    queued: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    # cancel: cancelled at once, running ones asked to stop, and dependents cancelled with them.
    cancelled: int = 0
    requested: int = 0
    dependents_cancelled: int = 0
    # purge: deleted, by state; ``refused`` holds the jobs kept because a remaining job depends on them.
    deleted: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The report as plain data for ``--json``, with the fields of its action only."""
        data = asdict(self)
        keep = {
            "retry": ("queued", "waiting", "refused"),
            "cancel": ("cancelled", "requested", "dependents_cancelled"),
            "purge": ("deleted", "refused"),
        }[self.action]
        for name in ("queued", "waiting", "refused", "cancelled", "requested", "dependents_cancelled", "deleted"):
            if name not in keep:
                del data[name]
        if self.dry_run:
            for name in (*keep, "changed", "batches"):
                data.pop(name, None)
        else:
            del data["sample"]
        return data


def preview(conn: Connection, action: str, job_filter: JobFilter, sample: int = SAMPLE) -> BulkReport:
    """How many jobs the filter matches and the latest few of them; changes nothing."""
    started = time.perf_counter()
    report = BulkReport(action, True, repository.count_matching(conn, job_filter))
    report.sample = repository.sample_matching(conn, job_filter, sample) if report.matched else []
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def perform(conn: Connection, action: str, job_filter: JobFilter, batch_size: int = DEFAULT_BATCH) -> BulkReport:
    """Act on every job the filter matches, ``batch_size`` per transaction, walking the table once by id (up for
    retry and cancel, so dependencies come before their dependents; down for purge, so dependents go first).
    Jobs another host holds are skipped: it acts on them. Running it again changes nothing more."""
    if action not in ACTS_ON:
        raise ValueError(f"unknown bulk action {action!r}")
    started = time.perf_counter()
    report = BulkReport(action, False, 0)
    walk = batch_size * WALK_PER_BATCH
    cursor: int | None = LAST_ID if action == "purge" else FIRST_ID
    while cursor is not None:
        batch = _batch(conn, action, job_filter, cursor, batch_size, walk, report)
        report.batches += 1
        report.matched += batch.matched
        report.changed += len(batch.changed)
        report.refused.extend(batch.refused)
        cursor = batch.cursor
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _batch(
    conn: Connection, action: str, job_filter: JobFilter, cursor: int, size: int, walk: int, report: BulkReport
) -> repository.Batch:
    if action == "retry":
        batch = repository.retry_batch(conn, job_filter, cursor, size, walk)
        report.queued.extend(sorted(set(batch.changed) - set(batch.waiting)))
        report.waiting.extend(batch.waiting)
    elif action == "cancel":
        batch = repository.cancel_batch(conn, job_filter, cursor, size, walk)
        report.cancelled += len(batch.changed) - len(batch.requested)
        report.requested += len(batch.requested)
        report.dependents_cancelled += batch.dependents_cancelled
    else:
        batch, purged = repository.purge_batch(conn, job_filter, cursor, size, walk)
        for state in ("succeeded", "failed", "cancelled"):
            report.deleted[state] = report.deleted.get(state, 0) + getattr(purged, state)
    return batch


def summary(report: BulkReport) -> str:
    """One line saying what a bulk action did, for people."""
    refused = len(report.refused)
    if report.action == "retry":
        line = (
            f"retried {report.changed} of {report.matched} matching job(s): {len(report.queued)} queued, "
            f"{len(report.waiting)} waiting on dependencies, {refused} refused"
        )
        if refused:
            line += f" (a failed or cancelled dependency, or a live job holds the key; e.g. {_few(report.refused)})"
        return line
    if report.action == "cancel":
        return (
            f"cancelled {report.cancelled} of {report.matched} matching job(s) and "
            f"{report.dependents_cancelled} dependent job(s); asked the workers of {report.requested} running "
            "job(s) to stop them"
        )
    by_state = ", ".join(f"{n} {state}" for state, n in report.deleted.items() if n)
    line = f"deleted {report.changed} of {report.matched} matching job(s)" + (f" ({by_state})" if by_state else "")
    if refused:
        line += f"; kept {refused} that remaining jobs depend on (e.g. {_few(report.refused)})"
    return line


def _few(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
