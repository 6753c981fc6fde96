"""The ``sched`` command line. Commands parse their arguments, make one call into the core, and print;
``main`` is the one place that turns errors into an ``Error:`` line and an exit code. Heavy modules are
imported inside the commands that need them, so that ``sched --help`` and ``sched add`` start fast."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pgsched.errors import SchedError

if TYPE_CHECKING:
    from pgsched.db import Connection
    from pgsched.settings import Settings

app = typer.Typer(
    name="sched",
    help="A PostgreSQL-backed job queue: add jobs, run workers, watch and maintain the queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"debug": False}

# Options shared by several commands, declared once so twin commands cannot drift apart.
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
QueueOption = Annotated[Optional[str], typer.Option("--queue", "-Q", help="Queue name.", show_default=False)]
StaleAfter = Annotated[
    Optional[str], typer.Option("--stale-after", help="Heartbeat age after which a worker counts as dead [30s].")
]


def _settings(**overrides: Any) -> Settings:
    from pgsched.settings import load_settings

    return load_settings(**overrides)


def _connect(settings: Settings) -> Connection:
    from pgsched.db import connect
    from pgsched.quicksettings import resolve_dsn

    return connect(resolve_dsn(settings))


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


def _print_version(value: bool) -> None:
    if value:
        from pgsched import __version__

        sys.stdout.write(f"sched {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (passwords redacted).")] = False,
    # Eager, so that it runs before the check that a command was given.
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """A PostgreSQL-backed job queue: add jobs, run workers, watch and maintain the queue."""
    _state["debug"] = debug


@app.command()
def migrate(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if any migration is pending; change nothing.")] = False,
    roles: Annotated[
        bool, typer.Option("--roles", help="Also create the sched_producer and sched_worker roles and grant them.")
    ] = False,
    as_json: JsonOutput = False,
) -> None:
    """Apply pending schema migrations (safe to run concurrently and repeatedly)."""
    from pgsched import migrate as migrations

    if check and roles:
        raise _usage("--check cannot be combined with --roles")
    with _connect(_settings()) as conn:
        if check:
            todo = migrations.pending(conn)
            if as_json:
                _print_json({"pending": [f"{m.version:04d}_{m.name}" for m in todo]})
            for m in todo if not as_json else []:
                sys.stdout.write(f"{m.version:04d}_{m.name}\n")
            if todo:
                raise SchedError(f"{len(todo)} migration(s) pending; run `sched migrate`")
            if not as_json:
                sys.stderr.write("schema is current\n")
            return
        done = migrations.apply(conn)
        from pgsched import roles as group_roles

        # Once the roles exist, tables that new migrations add get their grants without being asked.
        granted = roles or (bool(done) and group_roles.installed(conn))
        if granted:
            group_roles.apply_roles(conn)
    if granted and not as_json:
        sys.stderr.write("granted sched_producer and sched_worker their privileges\n")
    if as_json:
        _print_json({"applied": [f"{m.version:04d}_{m.name}" for m in done]})
        return
    for m in done:
        sys.stdout.write(f"{m.version:04d}_{m.name}\n")
    sys.stderr.write(f"applied {len(done)} migration(s)\n" if done else "schema is current\n")


@app.command()
def add(
    task: Annotated[Optional[str], typer.Argument(help="Task name, e.g. send_report or sched.noop.")] = None,
    payload: Annotated[
        Optional[str], typer.Option("--payload", "-p", help="JSON object: inline, a file path, or - for stdin.")
    ] = None,
    queue: Annotated[str, typer.Option("--queue", "-Q", help="Queue name.")] = "default",
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first (-1000..1000).")] = 0,
    delay: Annotated[Optional[str], typer.Option("--delay", help="Run after this long, e.g. 30s, 5m, 1h30m.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Run at this ISO 8601 time.")] = None,
    max_attempts: Annotated[
        Optional[int], typer.Option("--max-attempts", help="Attempts before the job fails [3].")
    ] = None,
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="Per-attempt time limit [5m].")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Dedupe key: one live job per queue and key.")] = None,
    after: Annotated[
        Optional[list[int]], typer.Option("--after", help="Run only after job ID succeeds (repeatable).")
    ] = None,
    jsonl: Annotated[
        Optional[str], typer.Option("--jsonl", help="Add one job per JSON line of FILE (- for stdin).")
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Add a job (or many with --jsonl) and print each new job's id."""
    from pgsched.durations import parse_duration
    from pgsched.jobspec import JobDefaults, build_job, read_payload_argument
    from pgsched.models import Enqueued
    from pgsched.quicksettings import quick_settings

    settings = quick_settings()
    defaults = JobDefaults(
        task=task,
        payload_json=read_payload_argument(payload, settings.max_payload_bytes),
        queue=queue,
        priority=priority,
        max_attempts=settings.max_attempts if max_attempts is None else max_attempts,
        timeout_s=settings.job_timeout if timeout is None else parse_duration(timeout, what="timeout"),
        key=key,
    )
    results: list[Enqueued]
    if jsonl is not None:
        if after:
            raise _usage("--after cannot be combined with --jsonl")
        jobs = _read_jsonl(jsonl, defaults, delay, at, settings.max_payload_bytes)
        from pgsched import repository

        with _connect(settings) as conn:
            results = repository.enqueue_many(conn, jobs)
    else:
        job = build_job(defaults, after=after or (), delay=delay, at=at)
        from pgsched import repository

        with _connect(settings) as conn:
            results = [repository.enqueue(conn, job)]
    out = sys.stdout
    for result in results:
        if as_json:
            out.write(json.dumps({"id": result.id, "deduplicated": result.deduplicated}) + "\n")
        else:
            out.write(f"{result.id}\n")


def _read_jsonl(path: str, defaults: Any, delay: str | None, at: str | None, max_bytes: int) -> list:
    from dataclasses import replace

    from pgsched.jobspec import jobs_from_jsonl, parse_at, parse_delay

    if delay is not None and at is not None:
        raise _usage("use --delay or --at, not both")
    base = replace(
        defaults,
        delay_s=parse_delay(delay) if delay is not None else None,
        run_at=parse_at(at) if at is not None else None,
    )
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise _usage(f"cannot read {path!r}: {exc.strerror}") from None
    with stream:
        try:
            lines = stream.readlines()
        except UnicodeDecodeError:
            raise _usage(f"{path!r} is not UTF-8 text") from None
    if sys.stderr.isatty() and len(lines) > 1000:
        from rich.progress import track

        return list(jobs_from_jsonl(track(lines, description="validating", transient=True), base, max_bytes))
    return list(jobs_from_jsonl(lines, base, max_bytes))


def _usage(message: str) -> SchedError:
    from pgsched.errors import InvalidInput

    return InvalidInput(message)


@app.command()
def status(
    job_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="Show one job in detail.")] = None,
    queue: QueueOption = None,
    as_json: JsonOutput = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Live dashboard, redrawn until Ctrl-C.")] = False,
    interval: Annotated[str, typer.Option("--interval", help="Dashboard refresh interval.")] = "1s",
) -> None:
    """Show per-queue counts and workers, or one job's detail."""
    from pgsched import repository

    if queue is not None:
        from pgsched.models import check_queue

        check_queue(queue)
    settings = _settings()
    if watch:
        _watch(settings, queue, interval, job_id is not None or as_json)
        return
    with _connect(settings) as conn:
        if job_id is not None:
            from pgsched.why import describe_job

            job = describe_job(conn, job_id, settings.stale_after)
            if as_json:
                _print_json(_job_json(job))
            else:
                from pgsched.render import print_job

                print_job(job)
            return
        queues = repository.count_by_queue(conn, queue)
        workers = repository.list_workers(conn)
    if as_json:
        _print_json({"queues": queues, "workers": workers})
    else:
        from pgsched.render import print_summary

        print_summary(queues, workers)


def _watch(settings: Settings, queue: str | None, interval: str, conflicting: bool) -> None:
    from pgsched.durations import parse_duration

    if conflicting:
        raise _usage("--watch shows every queue live; it cannot be combined with ID or --json")
    seconds = parse_duration(interval, what="interval")
    if not 0.1 <= seconds <= 3600:
        raise _usage(f"invalid interval {interval!r}: use 100ms to 1h")
    from pgsched.dashboard import watch

    watch(lambda: _connect(settings), seconds, queue)


_JOB_JSON_FIELDS = (
    "id queue task state attempt max_attempts priority run_at created_at started_at finished_at payload result "
    "error progress depends_on why"
).split()


def _job_json(job: dict[str, Any]) -> dict[str, Any]:
    from pgsched.render import iso

    shaped = {name: job.get(name) for name in _JOB_JSON_FIELDS}
    for name in ("run_at", "created_at", "started_at", "finished_at"):
        shaped[name] = iso(shaped[name])
    shaped["depends_on"] = list(shaped["depends_on"] or [])
    return shaped


@app.command()
def reap(stale_after: StaleAfter = None, as_json: JsonOutput = False) -> None:
    """Requeue jobs of dead workers and overdue runs now (workers also do this on their own)."""
    import asyncio

    from pgsched import repository
    from pgsched.db import connect_async
    from pgsched.settings import resolve_dsn

    settings = _settings(stale_after=stale_after)

    async def run() -> repository.ReapResult:
        conn = await connect_async(resolve_dsn(settings), application_name="sched-reap")
        try:
            return await repository.reap_stale(conn, wait=True)
        finally:
            await conn.close()

    result = asyncio.run(run())
    if as_json:
        _print_json({"requeued": result.requeued, "failed": result.failed, "workers_removed": result.workers_removed})
    else:
        sys.stdout.write(
            f"requeued {len(result.requeued)}, failed {len(result.failed)}, "
            f"removed {result.workers_removed} dead worker(s)\n"
        )


@app.command()
def cleanup(
    older_than: Annotated[
        Optional[str], typer.Option("--older-than", help="Delete jobs finished longer ago than this [7d].")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000, help="Rows per transaction.")] = 5000,
    as_json: JsonOutput = False,
) -> None:
    """Delete succeeded, failed and cancelled jobs by completion time, in small batches (cron-safe)."""
    import time

    from pgsched import repository

    settings = _settings(retention=older_than)
    started = time.perf_counter()
    with _connect(settings) as conn:
        if dry_run:
            counts = repository.count_finished(conn, settings.retention)
        else:
            counts = repository.CleanupCounts()
            while True:
                batch = repository.delete_finished_batch(conn, settings.retention, batch_size)
                counts.succeeded += batch.succeeded
                counts.failed += batch.failed
                counts.cancelled += batch.cancelled
                if batch.total < batch_size:
                    break
    elapsed = time.perf_counter() - started
    report = {
        "dry_run": dry_run,
        "deleted": 0 if dry_run else counts.total,
        "would_delete": counts.total if dry_run else 0,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "cancelled": counts.cancelled,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(counts.total / elapsed) if elapsed > 0 and not dry_run else None,
    }
    if as_json:
        _print_json(report)
    else:
        verb = "would delete" if dry_run else "deleted"
        sys.stdout.write(
            f"{verb} {counts.total} job(s): {counts.succeeded} succeeded, {counts.failed} failed, "
            f"{counts.cancelled} cancelled ({elapsed:.2f}s)\n"
        )


@app.command()
def worker(
    queue: Annotated[
        Optional[list[str]], typer.Option("--queue", "-Q", help="Queue to serve (repeatable; in priority order).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, max=10000, help="Jobs run at once.")] = 10,
    app_module: Annotated[
        Optional[str], typer.Option("--app", help="Module that registers handlers with @task [SCHED_APP].")
    ] = None,
    processes: Annotated[int, typer.Option("--processes", min=1, max=256, help="Worker processes to supervise.")] = 1,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10000, help="Most jobs claimed per query.")
    ] = 500,
    health_port: Annotated[
        Optional[int], typer.Option("--health-port", min=0, max=65535, help="Serve /healthz and /metrics here.")
    ] = None,
    health_host: Annotated[str, typer.Option("--health-host", help="Address of the health server.")] = "127.0.0.1",
    shutdown_timeout: Annotated[
        str, typer.Option("--shutdown-timeout", help="How long running jobs may finish after SIGTERM.")
    ] = "30s",
    poll_interval: Annotated[
        Optional[str], typer.Option("--poll-interval", help="Polling fallback interval [1s].")
    ] = None,
    stale_after: StaleAfter = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once nothing is ready and nothing is running.")] = False,
    no_listen: Annotated[
        bool, typer.Option("--no-listen", help="Poll only, no LISTEN/NOTIFY (for PgBouncer transaction mode).")
    ] = False,
    no_claim_ahead: Annotated[
        bool,
        typer.Option(
            "--no-claim-ahead", help="Claim only for free slots, never the few jobs short handlers want next."
        ),
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs (each job at -v).")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Fewer logs.")] = 0,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
) -> None:
    """Run jobs: claim ready jobs, run their handlers, record outcomes; stop gracefully on SIGTERM."""
    from pgsched.durations import parse_duration
    from pgsched.logs import configure
    from pgsched.models import check_queue
    from pgsched.settings import resolve_dsn

    settings = _settings(app=app_module, poll_interval=poll_interval, stale_after=stale_after)
    queues = [check_queue(q) for q in (queue or ["default"])]
    shutdown_s = parse_duration(shutdown_timeout, what="shutdown timeout")
    level = configure(verbose - quiet, json_lines=log_json)
    if processes > 1:
        from pgsched.worker.supervisor import supervise

        def child_args(i: int) -> list[str]:
            args = ["worker", "--concurrency", str(concurrency), "--batch-size", str(batch_size)]
            args += [part for q in queues for part in ("--queue", q)]
            args += ["--shutdown-timeout", str(shutdown_s), "--poll-interval", str(settings.poll_interval)]
            args += ["--stale-after", str(settings.stale_after)]
            if settings.app:
                args += ["--app", settings.app]
            if health_port is not None:
                args += ["--health-port", str(health_port + i), "--health-host", health_host]
            args += ["--burst"] * burst + ["--no-listen"] * no_listen + ["--log-json"] * log_json
            args += ["--no-claim-ahead"] * no_claim_ahead
            args += ["-v"] * max(verbose, 0) + ["-q"] * max(quiet, 0)
            return args

        raise typer.Exit(supervise(processes, child_args))
    from pgsched.worker import WorkerConfig, run_worker

    config = WorkerConfig(
        queues=queues,
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=settings.poll_interval,
        stale_after=settings.stale_after,
        shutdown_timeout=shutdown_s,
        timeout_grace=settings.timeout_grace,
        listen=not no_listen,
        burst=burst,
        claim_ahead=not no_claim_ahead,
        health_host=health_host,
        health_port=health_port,
        log_jobs=level == "DEBUG",
        max_payload_bytes=settings.max_payload_bytes,
        commit=settings.worker_commit,
    )
    raise typer.Exit(run_worker(resolve_dsn(settings), config, settings.app))


# --- cancel, retry, schedules and queue controls ---------------------------------------------------------


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(metavar="ID", help="The job to cancel.")],
    as_json: JsonOutput = False,
) -> None:
    """Cancel a waiting or queued job (and its dependents), or ask the worker running it to stop it."""
    from pgsched import repository

    with _connect(_settings()) as conn:
        result = repository.cancel_job(conn, job_id)
    if as_json:
        _print_json(
            {
                "id": result.id,
                "state": result.state,
                "cancel_requested": result.state == "running",
                "dependents_cancelled": result.dependents_cancelled,
            }
        )
    elif result.state == "running":
        sys.stdout.write(f"{job_id}: cancellation requested; its worker will stop it\n")
    else:
        extra = f" and {result.dependents_cancelled} dependent job(s)" if result.dependents_cancelled else ""
        sys.stdout.write(f"{job_id}: cancelled{extra}\n")


@app.command()
def retry(
    job_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="The failed or cancelled job to retry.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed job (of --queue).")] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled", help="Retry every cancelled job (of --queue).")] = False,
    queue: QueueOption = None,
    as_json: JsonOutput = False,
) -> None:
    """Put failed or cancelled jobs back in the queue with a fresh attempt budget.

    A job whose dependencies have not all succeeded goes back to waiting; one whose dependency failed or was
    cancelled is refused (retry that dependency first, or in the same call)."""
    from pgsched import repository

    if job_id is not None and (failed or cancelled or queue is not None):
        raise _usage("give an ID, or --failed/--cancelled [--queue Q], not both")
    if job_id is None and not (failed or cancelled):
        raise _usage("give an ID, or --failed and/or --cancelled")
    if queue is not None:
        from pgsched.models import check_queue

        check_queue(queue)
    with _connect(_settings()) as conn:
        if job_id is not None:
            result = repository.retry_job(conn, job_id)
        else:
            states = [s for s, wanted in (("failed", failed), ("cancelled", cancelled)) if wanted]
            result = repository.retry_matching(conn, states, queue)
    if as_json:
        _print_json({"queued": result.queued, "waiting": result.waiting, "refused": result.refused})
        return
    for revived in result.queued:
        sys.stdout.write(f"{revived}\n")
    for revived in result.waiting:
        sys.stdout.write(f"{revived}\n")
    if job_id is None:
        sys.stderr.write(
            f"retried {len(result.queued) + len(result.waiting)} job(s): {len(result.queued)} queued, "
            f"{len(result.waiting)} waiting on dependencies, {len(result.refused)} refused\n"
        )


schedule_app = typer.Typer(
    help="Recurring jobs: enqueue a task at each tick of a cron expression.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add")
def schedule_add(
    name: Annotated[str, typer.Argument(help="Schedule name (replaces a schedule of that name).")],
    task: Annotated[str, typer.Argument(help="Task to enqueue at each tick.")],
    cron: Annotated[str, typer.Option("--cron", help="Cron expression, e.g. '*/5 * * * *' or @daily.")],
    payload: Annotated[
        Optional[str], typer.Option("--payload", "-p", help="JSON object: inline, a file path, or - for stdin.")
    ] = None,
    queue: Annotated[str, typer.Option("--queue", "-Q", help="Queue name.")] = "default",
    tz: Annotated[str, typer.Option("--tz", help="Time zone the expression is read in (IANA name).")] = "UTC",
    catch_up: Annotated[
        str,
        typer.Option("--catch-up", help="Ticks missed while no worker ran: latest (one job), all, or none."),
    ] = "latest",
    as_json: JsonOutput = False,
) -> None:
    """Create or replace a schedule; workers enqueue one job per tick."""
    from pgsched import repository
    from pgsched.jobspec import read_payload_argument
    from pgsched.schedules import build_schedule

    settings = _settings()
    spec = build_schedule(
        name,
        cron,
        task,
        queue=queue,
        payload_json=read_payload_argument(payload, settings.max_payload_bytes),
        tz=tz,
        catch_up=catch_up,
    )
    with _connect(settings) as conn:
        created = repository.upsert_schedule(conn, spec)
        found = next(s for s in repository.list_schedules(conn) if s["name"] == spec.name)
    if as_json:
        _print_json({**_schedule_json(found), "created": created})
    else:
        sys.stdout.write(f"{spec.name}\n")
        sys.stderr.write(f"{'created' if created else 'replaced'}; next run at {found['next_run_at'].isoformat()}\n")


def _schedule_json(schedule: dict[str, Any]) -> dict[str, Any]:
    from pgsched.render import iso

    return {**schedule, **{k: iso(schedule[k]) for k in ("next_run_at", "last_tick", "created_at")}}


@schedule_app.command("list")
def schedule_list(as_json: JsonOutput = False) -> None:
    """List schedules with their next run."""
    from pgsched import repository

    with _connect(_settings()) as conn:
        schedules = repository.list_schedules(conn)
    if as_json:
        _print_json([_schedule_json(s) for s in schedules])
    else:
        from pgsched.render import print_schedules

        print_schedules(schedules)


@schedule_app.command("remove")
def schedule_remove(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Remove a schedule (jobs it already enqueued stay)."""
    from pgsched import repository
    from pgsched.schedules import check_schedule_name

    check_schedule_name(name)
    with _connect(_settings()) as conn:
        repository.delete_schedule(conn, name)
    sys.stderr.write(f"removed schedule {name}\n")


queue_app = typer.Typer(
    help="Queue controls shared by all workers: pause, rate limit, backlog cap.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(queue_app, name="queue")
QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="Queue name.")]


@queue_app.command("pause")
def queue_pause(name: QueueArgument) -> None:
    """Stop every worker from claiming jobs of QUEUE (running jobs finish)."""
    _set_paused(name, True)


@queue_app.command("resume")
def queue_resume(name: QueueArgument) -> None:
    """Let workers claim jobs of QUEUE again."""
    _set_paused(name, False)


def _set_paused(name: str, paused: bool) -> None:
    from pgsched import repository
    from pgsched.models import check_queue

    check_queue(name)
    with _connect(_settings()) as conn:
        repository.set_queue_paused(conn, name, paused)
    sys.stderr.write(f"queue {name} {'paused' if paused else 'resumed'}\n")


@queue_app.command("limit")
def queue_limit(
    name: QueueArgument,
    rate: Annotated[
        Optional[str], typer.Option("--rate", help="Most jobs started per time across all workers: 100/s, 30/m, none.")
    ] = None,
    burst: Annotated[
        Optional[int],
        typer.Option("--burst", min=1, help="Jobs that may start at once after a pause [one second's worth]."),
    ] = None,
    max_backlog: Annotated[
        Optional[int], typer.Option("--max-backlog", min=1, help="Refuse adds while this many jobs are queued.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the rate limit and the backlog cap.")] = False,
) -> None:
    """Set or remove QUEUE's global rate limit (a token bucket) and backlog cap."""
    from pgsched import repository
    from pgsched.durations import parse_rate
    from pgsched.models import check_queue

    check_queue(name)
    if clear and (rate is not None or burst is not None or max_backlog is not None):
        raise _usage("--clear cannot be combined with --rate, --burst or --max-backlog")
    if not clear and rate is None and burst is None and max_backlog is None:
        raise _usage("give --rate, --max-backlog or --clear")
    if burst is not None and (rate is None or rate.strip().lower() == "none"):
        raise _usage("--burst needs --rate")
    per_second = None if rate is None or rate.strip().lower() == "none" else parse_rate(rate)
    with _connect(_settings()) as conn:
        if clear:
            repository.set_queue_rate(conn, name, None)
            repository.set_queue_max_backlog(conn, name, None)
        if rate is not None:
            repository.set_queue_rate(conn, name, per_second, burst)
        if max_backlog is not None:
            repository.set_queue_max_backlog(conn, name, max_backlog)
    sys.stderr.write(f"queue {name} updated\n")


@queue_app.command("list")
def queue_list(as_json: JsonOutput = False) -> None:
    """List queues with their pause state, rate limit, bucket level, backlog cap and load."""
    from pgsched import repository

    with _connect(_settings()) as conn:
        queues = repository.list_queues(conn)
    if as_json:
        _print_json(queues)
    else:
        from pgsched.render import print_queue_settings

        print_queue_settings(queues)


@app.command()
def doctor(
    max_lag: Annotated[
        str, typer.Option("--max-lag", help="Fail when a ready job has waited longer than this.")
    ] = "60s",
    max_transaction_age: Annotated[
        str, typer.Option("--max-transaction-age", help="Fail on transactions open longer than this.")
    ] = "5m",
    stale_after: StaleAfter = None,
    as_json: JsonOutput = False,
) -> None:
    """Check the database, schema, workers, lag and vacuum health; exit 1 if any check fails."""
    from pgsched.doctor import Thresholds, diagnose
    from pgsched.durations import parse_duration
    from pgsched.quicksettings import resolve_dsn

    settings = _settings(stale_after=stale_after)
    limits = Thresholds(
        max_lag_s=parse_duration(max_lag, what="--max-lag"),
        stale_after_s=settings.stale_after,
        max_transaction_age_s=parse_duration(max_transaction_age, what="--max-transaction-age"),
    )
    report = diagnose(resolve_dsn(settings), limits)
    if as_json:
        _print_json(report.as_json())
    else:
        from pgsched.render import print_doctor

        print_doctor(report)
    if not report.ok:
        raise SchedError(f"{len(report.failed)} check(s) failed: {', '.join(c.name for c in report.failed)}")


@app.command()
def bench(
    jobs: Annotated[int, typer.Option("--jobs", min=100, help="No-op jobs for the enqueue and drain runs.")] = 20_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Drain worker concurrency.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Drain worker claim batch.")] = 500,
    dsn: Annotated[
        Optional[str], typer.Option("--dsn", help="Server to measure on [SCHED_DATABASE_URL]; a database is made.")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the benchmark database afterwards.")] = False,
    as_json: JsonOutput = False,
) -> None:
    """Measure enqueue, drain, latency, I/O-bound efficiency and worker memory in a throwaway database."""
    from pgsched import bench as benchmark
    from pgsched.settings import resolve_dsn

    server = dsn or resolve_dsn(_settings())
    config = benchmark.BenchConfig(jobs=jobs, concurrency=concurrency, batch_size=batch_size, keep_database=keep)
    figures = benchmark.run(server, config, lambda line: sys.stderr.write(f"- {line}\n"))
    if as_json:
        _print_json(figures)
    else:
        from pgsched.render import print_bench

        print_bench(figures, benchmark.verdicts(figures["results"]))


@app.command()
def demo(
    duration: Annotated[str, typer.Option("--duration", help="How long the worker runs.")] = "20s",
    interval: Annotated[str, typer.Option("--interval", help="Dashboard refresh interval.")] = "1s",
) -> None:
    """Run a realistic demo: migrate, add a mixed workload, work it under the live dashboard, summarize."""
    from rich.console import Console

    from pgsched.demo import run_demo
    from pgsched.durations import parse_duration
    from pgsched.render import print_demo_summary
    from pgsched.settings import resolve_dsn

    settings = _settings()
    duration_s = parse_duration(duration, what="duration")
    interval_s = parse_duration(interval, what="interval")
    dsn = resolve_dsn(settings)
    console = Console()

    def watch(seconds: float) -> None:
        if not console.is_terminal:
            import time

            sys.stderr.write(f"running the demo worker for {seconds:g}s (no terminal: no live dashboard)\n")
            time.sleep(seconds)
            return
        from pgsched.dashboard import watch as live

        live(lambda: _connect(settings), interval_s, console=console, refreshes=max(1, round(seconds / interval_s)))

    sys.stderr.write("migrating and adding the demo workload...\n")
    print_demo_summary(run_demo(dsn, duration_s, watch), console)


@app.command()
def ui(
    host: Annotated[str, typer.Option("--host", help="Address to serve on; off loopback a token is required.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 8765,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Hide and refuse cancel, retry, pause and resume.")
    ] = False,
    token: Annotated[
        Optional[str],
        typer.Option("--token", envvar="SCHED_UI_TOKEN", show_envvar=True, help="Access token browsers must present."),
    ] = None,
) -> None:
    """Serve the web dashboard: queues (live), jobs, workers, schedules, failures (needs pgsched[web])."""
    from pgsched.settings import resolve_dsn
    from pgsched.web import check_binding, serve

    check_binding(host, token)
    settings = _settings()
    sys.stderr.write(f"sched ui on http://{host}:{port}/{' (read-only)' if read_only else ''}\n")
    dsn = resolve_dsn(settings)
    serve(dsn, host=host, port=port, read_only=read_only, token=token, stale_after_s=settings.stale_after)


def _app_for(argv: list[str]) -> typer.Typer:
    """The app holding only the command that ``argv`` names: building every command's parameters costs a
    one-shot ``sched add`` more than its own work. The whole app serves ``--help``, completion and mistakes."""
    import copy

    name = next((arg for arg in argv if not arg.startswith("-")), None)
    if name is None or "_SCHED_COMPLETE" in os.environ:
        return app
    commands = [c for c in app.registered_commands if (c.name or c.callback.__name__.replace("_", "-")) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    narrow = copy.copy(app)
    narrow.registered_commands = commands
    narrow.registered_groups = groups
    return narrow


def main() -> None:
    """Run the CLI; every SchedError becomes one ``Error:`` line on stderr and its exit code."""
    code = 0
    if "_SCHED_COMPLETE" in os.environ:  # a shell asking for completions (see completions/)
        from pgsched.completions import enable_runtime_completion

        enable_runtime_completion()
    try:
        result = _app_for(sys.argv[1:])(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SchedError as exc:
        _report(exc, _with_hint(exc), exc.exit_code)
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        code = exc.exit_code
        _report(exc, exc.format_message(), code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("Aborted.\n")
        code = 130
    except Exception as exc:  # a bug: still one line, with the traceback behind --debug
        _report(exc, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        code = 1
    sys.exit(code)


def _with_hint(exc: SchedError) -> str:
    from pgsched.errors import DatabaseUnavailable

    if isinstance(exc, DatabaseUnavailable) and "SCHED_DATABASE_URL" not in exc.message:
        return f"{exc.message} (check SCHED_DATABASE_URL)"
    return exc.message


def _report(exc: BaseException, message: str, code: int) -> None:
    from pgsched.db import redact

    if _state["debug"]:
        import traceback

        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    line = " ".join(message.split())
    sys.stderr.write(redact(f"Error: {line}") + "\n")


if __name__ == "__main__":
    main()
