"""``sched worker`` and ``sched reap``: running jobs and taking back the jobs of dead workers."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pgsched.cli import core
from pgsched.cli.options import JsonOutput, group, print_json
from pgsched.durations import parse_duration
from pgsched.settings import load_settings, resolve_dsn

commands = group()


@commands.command()
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
    stale_after: Annotated[
        Optional[str],
        typer.Option(
            "--stale-after", help="This worker's promise: count it dead if its heartbeat is older than this [30s]."
        ),
    ] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once nothing is ready and nothing is running.")] = False,
    no_listen: Annotated[bool, typer.Option("--no-listen", help="Poll only, no LISTEN/NOTIFY.")] = False,
    listen_url: Annotated[
        Optional[str],
        typer.Option(
            "--listen-url",
            help="A direct or session-mode URL used only for LISTEN, when the database URL goes through a "
            "transaction pooler [SCHED_LISTEN_URL].",
        ),
    ] = None,
    no_claim_ahead: Annotated[
        bool,
        typer.Option(
            "--no-claim-ahead", help="Claim only for free slots, never the few jobs short handlers want next."
        ),
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs (each job at -v).")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Fewer logs.")] = 0,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    process_index: Annotated[
        Optional[int],
        typer.Option("--process-index", hidden=True, help="Run as child I of --processes (set by the supervisor)."),
    ] = None,
) -> None:
    """Run jobs: claim ready jobs, run their handlers, record outcomes; stop gracefully on SIGTERM."""
    settings = load_settings(
        app=app_module, poll_interval=poll_interval, stale_after=stale_after, listen_url=listen_url
    )
    queues = [core.models.check_queue(q) for q in (queue or ["default"])]
    shutdown_s = parse_duration(shutdown_timeout, what="shutdown timeout")
    level = core.logs.configure(verbose - quiet, json_lines=log_json)
    if processes > 1 and process_index is None:
        # Each child runs this same command line, told which one it is.
        argv = sys.argv[1:]
        raise typer.Exit(core.supervisor.supervise(processes, lambda i: [*argv, "--process-index", str(i)]))
    config = core.worker.WorkerConfig(
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
        health_port=None if health_port is None else health_port + (process_index or 0),
        log_jobs=level == "DEBUG",
        max_payload_bytes=settings.max_payload_bytes,
        commit=settings.worker_commit,
        listen_dsn=None if settings.listen_url is None else settings.listen_url.get_secret_value(),
    )
    raise typer.Exit(core.worker.run_worker(resolve_dsn(settings), config, settings.app))


@commands.command()
def reap(as_json: JsonOutput = False) -> None:
    """Requeue jobs of dead workers and overdue runs now (workers also do this on their own).

    Each worker is judged by the --stale-after it was started with, whoever reaps."""
    result = core.admin.reap(load_settings())
    if as_json:
        print_json({"requeued": result.requeued, "failed": result.failed, "workers_removed": result.workers_removed})
    else:
        sys.stdout.write(
            f"requeued {len(result.requeued)}, failed {len(result.failed)}, "
            f"removed {result.workers_removed} dead worker(s)\n"
        )
