"""Read models for the operator tools (status, why, dashboard, doctor): what they show, shaped for them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pgsched.db import Connection
from pgsched.sqlfiles import query


def count_by_queue(conn: Connection, queue: str | None = None) -> list[dict[str, Any]]:
    """Per-queue job counts by state and the age of the oldest ready job."""
    return conn.records(query("JobCountByQueue"), {"queue": queue})


def explain_facts(conn: Connection, job: dict[str, Any], stale_after_s: float) -> dict[str, Any]:
    """The facts that decide whether a ready job runs: queue settings, serving workers, their load, jobs ahead."""
    rows = conn.records(
        query("JobExplainFacts"),
        {
            "id": job["id"],
            "queue": job["queue"],
            "task": job["task"],
            "priority": job["priority"],
            "run_at": job["run_at"],
            "stale_after": timedelta(seconds=stale_after_s),
        },
    )
    return rows[0] if rows else {}
