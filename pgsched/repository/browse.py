"""Read models of the web dashboard's job pages: keyset pages of one queue's jobs, each a bounded walk of one
index (see sql/queries/browse.sql), and recent failures grouped by task and error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgsched.db import Connection
from pgsched.errors import InvalidInput
from pgsched.sqlfiles import query

# The filters a job page offers, each served by one index (see the query of each in sql/queries/browse.sql).
BROWSE_STATES = ("all", "queued", "scheduled", "running", "waiting", "succeeded", "failed", "cancelled")
_LISTINGS = {
    "all": "BrowseJobsAll",
    "queued": "BrowseJobsQueued",
    "scheduled": "BrowseJobsScheduled",
    "running": "BrowseJobsRunning",
    "waiting": "BrowseJobsWaiting",
    "succeeded": "BrowseJobsFinished",
    "failed": "BrowseJobsFinished",
    "cancelled": "BrowseJobsFinished",
}
_ASCENDING = {"queued", "scheduled"}
_FIRST_PRIORITY = 1001  # above the highest priority a job can have, so a first page starts at the top level
_LAST_ID = 2**63 - 1
_ROW_FIELDS = (
    "id task state deferred attempt max_attempts priority run_at created_at finished_at key group_name error".split()
)


@dataclass
class JobPage:
    """One page of jobs, the cursor of the next page (None at the end), and how far the walk went.

    ``exhausted`` says the page stopped because it examined its whole budget of index entries, not because it
    filled up: a filter no index serves matched few of them, and the next page goes on from the last one."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    exhausted: bool = False
    walk: int = 0


def _encode(priority: int | None, at: datetime | None, job_id: int) -> str:
    return f"{'' if priority is None else priority}~{'' if at is None else at.isoformat()}~{job_id}"


def _decode(cursor: str) -> tuple[int | None, datetime | None, int]:
    try:
        priority, at, job_id = cursor.split("~")
        return (int(priority) if priority else None, datetime.fromisoformat(at) if at else None, int(job_id))
    except ValueError:
        raise InvalidInput(f"invalid page cursor {cursor!r}") from None


def browse_jobs(
    conn: Connection,
    queue: str,
    *,
    state: str = "all",
    task: str | None = None,
    key: str | None = None,
    group: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    walk: int = 5000,
) -> JobPage:
    """A page of ``queue``'s jobs in ``state`` (one of BROWSE_STATES), optionally of one task, group or dedupe key,
    starting after ``cursor`` (a page's ``next_cursor``); each page examines at most ``walk`` index entries."""
    if state not in _LISTINGS:
        raise InvalidInput(f"unknown state {state!r}: use one of {', '.join(BROWSE_STATES)}")
    if key is not None and state in ("all", "queued", "scheduled", "running", "waiting"):
        return _live_holder(conn, queue, state, key, task, group)
    ascending = state in _ASCENDING
    priority, at, after_id = _decode(cursor) if cursor else (None, None, 0 if ascending else _LAST_ID)
    if state == "queued" and priority is None:
        priority = _FIRST_PRIORITY
    rows = conn.records(
        query(_LISTINGS[state]),
        {
            "queue": queue,
            "state": state,
            "task": task,
            "key": key,
            "group": group,
            "after_priority": priority,
            "after_at": at if at is not None else "-infinity" if ascending else "infinity",
            "after_id": after_id,
            "walk": walk,
            "limit": limit,
        },
    )
    hits = [r for r in rows if r["hit"]]
    page = JobPage(jobs=[{name: r[name] for name in _ROW_FIELDS} for r in hits[:limit]], walk=walk)
    if len(hits) > limit:
        page.next_cursor = _cursor(hits[limit - 1])
    elif rows and rows[-1]["walked"] == walk:
        page.next_cursor = _cursor(rows[-1])
        page.exhausted = True
    return page


def _cursor(row: dict[str, Any]) -> str:
    return _encode(row["after_priority"], row["after_at"], row["after_id"])


def _live_holder(conn: Connection, queue: str, state: str, key: str, task: str | None, group: str | None) -> JobPage:
    """The one live job holding ``key`` on ``queue``, if it matches the page's state, task and group."""
    rows = conn.records(query("BrowseJobGetByKey"), {"queue": queue, "key": key})
    shown = {"queued": ("queued", False), "scheduled": ("queued", True)}

    def matches(job: dict[str, Any]) -> bool:
        if task is not None and job["task"] != task:
            return False
        if group is not None and job["group_name"] != group:
            return False
        if state == "all":
            return True
        wanted_state, deferred = shown.get(state, (state, None))
        return job["state"] == wanted_state and (deferred is None or job["deferred"] == deferred)

    return JobPage(jobs=[job for job in rows if matches(job)])


def failure_groups(
    conn: Connection, *, window_s: float = 3600.0, walk: int = 20_000, groups: int = 50
) -> list[dict[str, Any]]:
    """Final failures of the last ``window_s`` grouped by queue, task and the first line of the error, most
    frequent first, among at most the latest ``walk`` finished jobs."""
    return conn.records(
        query("BrowseFailureGroups"), {"window": timedelta(seconds=window_s), "walk": walk, "groups": groups}
    )
