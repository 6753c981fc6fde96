"""``sched add``, ``status``, ``cancel`` and ``retry``: the commands about jobs (with filters instead of an ID,
``cancel`` and ``retry`` act on many, through cli/bulk.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace
from typing import Annotated, Any, Optional

import typer

from pgsched.cli import bulk, core
from pgsched.cli.options import Interval, JsonOutput, Payload, QueueName, QueueOption, group, print_json, usage
from pgsched.durations import parse_duration
from pgsched.settings import load_settings

commands = group()

BATCH = 500
BatchSizeOption = Annotated[
    Optional[int], typer.Option("--batch-size", min=1, max=10_000, help="Jobs per transaction [500].")
]


@commands.command()
def add(
    task: Annotated[Optional[str], typer.Argument(help="Task name, e.g. send_report or sched.noop.")] = None,
    payload: Payload = None,
    queue: QueueName = "default",
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first (-1000..1000).")] = 0,
    delay: Annotated[Optional[str], typer.Option("--delay", help="Run after this long, e.g. 30s, 5m, 1h30m.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Run at this ISO 8601 time.")] = None,
    max_attempts: Annotated[
        Optional[int], typer.Option("--max-attempts", help="Attempts before the job fails [3].")
    ] = None,
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="Per-attempt time limit [5m].")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Dedupe key: one live job per queue and key.")] = None,
    job_group: Annotated[
        Optional[str], typer.Option("--group", help="Group the queue's per-group limits count the job in.")
    ] = None,
    after: Annotated[
        Optional[list[int]], typer.Option("--after", help="Run only after job ID succeeds (repeatable).")
    ] = None,
    jsonl: Annotated[
        Optional[str], typer.Option("--jsonl", help="Add one job per JSON line of FILE (- for stdin).")
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Add a job (or many with --jsonl) and print each new job's id."""
    settings = load_settings()
    defaults = core.jobspec.JobDefaults.from_settings(settings)
    options = {
        "task": task,
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "run_at": at,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "key": key,
        "group": job_group,
    }
    defaults = replace(defaults, payload_json=core.jobspec.read_payload_argument(payload, settings.max_payload_bytes))
    if jsonl is None:
        jobs = [core.jobspec.build_job({**options, "after": after}, defaults, core.jobspec.COMMAND_LINE)]
    else:
        if after:
            raise usage("--after cannot be combined with --jsonl")
        # The options are every line's defaults.
        for_lines = core.jobspec.merge(defaults, options, core.jobspec.COMMAND_LINE)
        lines: Iterable[str] = core.jobspec.read_lines(jsonl)
        if sys.stderr.isatty() and len(lines) > 1000:
            lines = core.render.progress(lines, "validating")
        jobs = list(core.jobspec.jobs_from_jsonl(lines, for_lines))
    with core.connect(settings) as conn:
        results = core.client.enqueue_jobs(conn, jobs)
    for result in results:
        if as_json:
            print_json({"id": result.id, "deduplicated": result.deduplicated})
        else:
            sys.stdout.write(f"{result.id}\n")


@commands.command()
def status(
    job_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="Show one job in detail.")] = None,
    queue: QueueOption = None,
    as_json: JsonOutput = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Live dashboard, redrawn until Ctrl-C.")] = False,
    interval: Interval = "1s",
) -> None:
    """Show per-queue counts and workers, or one job's detail."""
    if queue is not None:
        core.models.check_queue(queue)
    settings = load_settings()
    if watch:
        if job_id is not None or as_json:
            raise usage("--watch shows every queue live; it cannot be combined with ID or --json")
        core.dashboard.watch(lambda: core.connect(settings), _refresh_interval(interval), queue)
        return
    if job_id is not None:
        with core.connect(settings) as conn:
            job = core.why.describe_job(conn, core.jobspec.existing_job_id(job_id))
        if as_json:
            print_json(core.render.job_json(job))
        else:
            core.render.print_job(job)
        return
    with core.connect(settings) as conn:
        queues = core.repository.count_by_queue(conn, queue)
        workers = core.repository.list_workers(conn)
    if as_json:
        print_json({"queues": queues, "workers": workers})
    else:
        core.render.print_summary(queues, workers)


def _refresh_interval(text: str) -> float:
    seconds = parse_duration(text, what="interval")
    if not 0.1 <= seconds <= 3600:
        raise usage(f"invalid interval {text!r}: use 100ms to 1h")
    return seconds


@commands.command()
def cancel(
    job_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="The job to cancel.")] = None,
    state: bulk.States = None,
    queue: bulk.Queue = None,
    task: bulk.Task = None,
    error_like: bulk.ErrorLike = None,
    since: bulk.Since = None,
    job_group: bulk.Group = None,
    key: bulk.Key = None,
    dry_run: bulk.DryRun = False,
    batch_size: BatchSizeOption = None,
    as_json: JsonOutput = False,
) -> None:
    """Cancel a waiting or queued job (and its dependents), or ask the worker running it to stop it; with filters
    instead of an ID, every matching waiting, queued or running job, in batches."""
    options = {
        "states": state,
        "queue": queue,
        "task": task,
        "error_like": error_like,
        "since": since,
        "group": job_group,
        "key": key,
    }
    if _bulk_or_one("cancel", job_id, options, dry_run, batch_size):
        bulk.run("cancel", options, dry_run=dry_run, batch_size=batch_size or BATCH, as_json=as_json)
        return
    assert job_id is not None
    with core.connect(load_settings()) as conn:
        result = core.repository.cancel_job(conn, core.jobspec.existing_job_id(job_id))
    running = result.state == "running"
    if as_json:
        print_json(
            {
                "id": result.id,
                "state": result.state,
                "cancel_requested": running,
                "dependents_cancelled": result.dependents_cancelled,
            }
        )
    elif running:
        sys.stdout.write(f"{job_id}: cancellation requested; its worker will stop it\n")
    else:
        extra = f" and {result.dependents_cancelled} dependent job(s)" if result.dependents_cancelled else ""
        sys.stdout.write(f"{job_id}: cancelled{extra}\n")


@commands.command()
def retry(
    job_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="The failed or cancelled job to retry.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="The same as --state failed.")] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled", help="The same as --state cancelled.")] = False,
    state: bulk.States = None,
    queue: bulk.Queue = None,
    task: bulk.Task = None,
    error_like: bulk.ErrorLike = None,
    since: bulk.Since = None,
    job_group: bulk.Group = None,
    key: bulk.Key = None,
    dry_run: bulk.DryRun = False,
    batch_size: BatchSizeOption = None,
    as_json: JsonOutput = False,
) -> None:
    """Put a failed or cancelled job back in the queue with a fresh attempt budget; with filters instead of an
    ID, every matching failed or cancelled job, in batches.

    A job whose dependencies have not all succeeded goes back to waiting; one whose dependency failed or was
    cancelled is refused (retry that dependency first, or in the same call)."""
    states = [*(state or []), *(["failed"] if failed else []), *(["cancelled"] if cancelled else [])]
    options = {
        "states": states,
        "queue": queue,
        "task": task,
        "error_like": error_like,
        "since": since,
        "group": job_group,
        "key": key,
    }
    if _bulk_or_one("retry", job_id, options, dry_run, batch_size):
        bulk.run("retry", options, dry_run=dry_run, batch_size=batch_size or BATCH, as_json=as_json)
        return
    assert job_id is not None
    with core.connect(load_settings()) as conn:
        result = core.repository.retry_job(conn, core.jobspec.existing_job_id(job_id))
    if as_json:
        print_json({"queued": result.queued, "waiting": result.waiting, "refused": result.refused})
        return
    for revived in [*result.queued, *result.waiting]:
        sys.stdout.write(f"{revived}\n")


def _bulk_or_one(
    action: str, job_id: int | None, options: dict[str, Any], dry_run: bool, batch_size: int | None
) -> bool:
    """Whether the command acts on the jobs its filters match (True) or on one ID; refuses both or neither."""
    given = core.bulk.filters_given(options)
    if job_id is not None and (given or dry_run or batch_size is not None):
        raise usage(f"give an ID or filters, not both (sched {action} ID, or sched {action} --queue Q ...)")
    if job_id is None and not given:
        raise usage(
            "give an ID, or at least one filter: --state, --queue, --task, --error-like, --since, --group or --key"
        )
    return job_id is None
