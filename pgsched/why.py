"""Why a job is where it is: one line derived from facts in the database (its state, dependencies, queue
settings, live workers and their load), for ``sched status ID``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgsched.db import Connection
from pgsched.durations import format_duration


def describe_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job's detail with its ``why`` filled in; NotFound if there is no such job."""
    from pgsched import repository

    job = repository.get_job(conn, job_id)
    deps: list[tuple[int, str]] = []
    facts: dict[str, Any] = {}
    if job["state"] == "waiting":
        deps = repository.dependency_states(conn, job_id)
    elif job["state"] == "queued":
        facts = repository.explain_facts(conn, job)
    job["why"] = explain(job, deps, facts)
    return job


def explain(job: dict[str, Any], deps: list[tuple[int, str]], facts: dict[str, Any]) -> str | None:
    """The reason ``job`` is not running (or a short factual line), from its dependencies and queue facts."""
    state = job["state"]
    if state == "waiting":
        live = [f"job {dep_id} ({dep_state})" for dep_id, dep_state in deps if dep_state != "succeeded"]
        return "waiting on dependencies: " + (", ".join(live) if live else "none left; about to be queued")
    if state == "queued":
        return _explain_queued(job, facts)
    if state == "failed":
        error = _summary(job.get("error")) or "no error recorded"
        if job["attempt"] >= job["max_attempts"]:
            return f"attempts exhausted ({job['attempt']} of {job['max_attempts']}); last error: {error}"
        return f"failed on attempt {job['attempt']} of {job['max_attempts']} without retry; error: {error}"
    if state == "cancelled":
        return _summary(job.get("error")) or "cancelled"
    if state == "running":
        return f"running attempt {job['attempt']} of {job['max_attempts']}"
    return None


def _explain_queued(job: dict[str, Any], facts: dict[str, Any]) -> str:
    now: datetime = facts["now"]
    retrying = f" (retrying after: {_summary(job['error'])})" if job.get("error") and job["attempt"] > 0 else ""
    if job["run_at"] > now:
        wait = format_duration((job["run_at"] - now).total_seconds())
        return f"scheduled for later: runs at {job['run_at'].isoformat()} (in {wait}){retrying}"
    queue, task = job["queue"], job["task"]
    if facts["paused"]:
        return f"queue {queue} is paused (sched queue resume {queue})"
    if facts["rate"] is not None and facts["tokens"] < 1:
        next_token = format_duration((1 - facts["tokens"]) / facts["rate"])
        return f"rate-limited: queue {queue} allows {_rate(facts['rate'])}; next slot in {next_token}"
    # Concurrency limits (docs/protocol.md, "Concurrency limits").
    if facts.get("max_running") is not None and facts["queue_running"] >= facts["max_running"]:
        return f"queue {queue} is at its max of {facts['max_running']} running"
    limit = facts.get("group_concurrency")
    if limit is not None and job.get("group") is not None and facts["group_running"] >= limit:
        return f"group {job['group']} is at its limit of {limit} running job{'s' if limit != 1 else ''}"
    # Group rates (docs/protocol.md, "Group rates"): a group without a bucket row has a full bucket.
    group_rate, group_tokens = facts.get("group_rate"), facts.get("group_tokens")
    if group_rate is not None and job.get("group") is not None and group_tokens is not None and group_tokens < 1:
        next_token = format_duration((1 - group_tokens) / group_rate)
        return f"group {job['group']} rate {_rate(group_rate)}: next token in {next_token}"
    if facts["task_workers"] == 0:
        if facts["queue_workers"] == 0:
            return f"no live worker serves queue {queue}"
        return f"no live worker serving queue {queue} handles task {task} ({facts['queue_workers']} lack it)"
    ahead = facts["ahead"]
    jobs_ahead = f"{ahead} job{'s' if ahead != 1 else ''} ahead of it"
    if facts["busy_slots"] >= facts["slots"]:
        workers = facts["task_workers"]
        who = "the only serving worker is" if workers == 1 else f"all {workers} serving workers are"
        return f"{who} busy ({facts['busy_slots']}/{facts['slots']} slots), {jobs_ahead}{retrying}"
    return f"ready; {jobs_ahead}{retrying}"


def _summary(error: str | None, limit: int = 200) -> str | None:
    """An error's first line, clipped: the line says why; the job's error field keeps the whole traceback."""
    if not error:
        return None
    first = error.strip().splitlines()[0] if error.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:g}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:g}/m"
    return f"{per_second * 3600:g}/h"
