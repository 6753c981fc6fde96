"""``sched migrate``, ``cleanup``, ``doctor``, ``ui``, ``bench`` and ``demo``: installing, maintaining, watching
and trying sched."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pgsched.cli import core
from pgsched.cli.options import Interval, JsonOutput, group, print_json, usage
from pgsched.durations import parse_duration
from pgsched.errors import SchedError
from pgsched.settings import load_settings, resolve_dsn

commands = group()


@commands.command()
def migrate(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if any migration is pending; change nothing.")] = False,
    roles: Annotated[
        bool, typer.Option("--roles", help="Also create the group roles (sched_producer, sched_worker) and grant them.")
    ] = False,
    as_json: JsonOutput = False,
) -> None:
    """Apply pending schema migrations (safe to run concurrently and repeatedly)."""
    if check and roles:
        raise usage("--check cannot be combined with --roles")
    with core.connect(load_settings()) as conn:
        if check:
            names = [f"{m.version:04d}_{m.name}" for m in core.migrate.pending(conn)]
        else:
            result = core.admin.apply_migrations(conn, grant_roles=roles)
            names = [f"{m.version:04d}_{m.name}" for m in result.applied]
    if as_json:
        print_json({"pending" if check else "applied": names})
    else:
        sys.stdout.writelines(f"{name}\n" for name in names)
    if check and names:
        raise SchedError(f"{len(names)} migration(s) pending; run `sched migrate`")
    if as_json:
        return
    if not check and result.granted:
        sys.stderr.write(f"granted {' and '.join(result.roles)} their privileges\n")
    sys.stderr.write(f"applied {len(names)} migration(s)\n" if names and not check else "schema is current\n")


@commands.command()
def cleanup(
    older_than: Annotated[
        Optional[str], typer.Option("--older-than", help="Delete jobs finished longer ago than this [7d].")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Also delete, row by row, succeeded jobs past the retention whose history slot holds later ones.",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000, help="Rows per transaction.")] = 5000,
    as_json: JsonOutput = False,
) -> None:
    """Delete succeeded, failed and cancelled jobs by completion time (cron-safe).

    Succeeded jobs go a history slot at a time (TRUNCATE), the rest in small batches."""
    settings = load_settings(retention=core.admin.older_than(older_than))
    with core.connect(settings) as conn:
        report = core.admin.cleanup(conn, settings.retention, batch_size, dry_run=dry_run, exact=exact)
    if as_json:
        print_json(report.as_json())
        return
    total = report.would_delete if dry_run else report.deleted
    emptied = "to empty" if dry_run else "emptied"
    slots = f", {report.slots_emptied} history slot(s) {emptied}" if report.slots_emptied else ""
    sys.stdout.write(
        f"{'would delete' if dry_run else 'deleted'} {total} job(s): {report.succeeded} succeeded, "
        f"{report.failed} failed, {report.cancelled} cancelled{slots} ({report.seconds:.2f}s)\n"
    )


@commands.command()
def doctor(
    max_lag: Annotated[
        str, typer.Option("--max-lag", help="Fail when a ready job has waited longer than this.")
    ] = "60s",
    max_transaction_age: Annotated[
        str, typer.Option("--max-transaction-age", help="Fail on transactions open longer than this.")
    ] = "5m",
    horizon_age: Annotated[
        str,
        typer.Option("--horizon-age", help="Warn on what holds back vacuum for longer than this (a duration)."),
    ] = "1m",
    horizon_xids: Annotated[
        int,
        typer.Option(
            "--horizon-xids", min=0, help="Warn on what holds back vacuum by more than this many transactions."
        ),
    ] = 100_000,
    as_json: JsonOutput = False,
) -> None:
    """Check the database, schema, workers, lag, vacuum and what holds it back; exit 1 if any check fails.

    A worker is live while its heartbeat is younger than the --stale-after it was started with."""
    settings = load_settings()
    limits = core.doctor.Thresholds(
        max_lag_s=parse_duration(max_lag, what="--max-lag"),
        max_transaction_age_s=parse_duration(max_transaction_age, what="--max-transaction-age"),
        horizon_age_s=parse_duration(horizon_age, what="--horizon-age"),
        horizon_xids=horizon_xids,
    )
    report = core.doctor.diagnose(resolve_dsn(settings), limits)
    if as_json:
        print_json(report.as_json())
    else:
        core.render.print_doctor(report)
    if not report.ok:
        raise SchedError(f"{len(report.failed)} check(s) failed: {', '.join(c.name for c in report.failed)}")


@commands.command()
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
    core.web.check_binding(host, token)
    settings = load_settings()
    sys.stderr.write(f"sched ui on http://{host}:{port}/{' (read-only)' if read_only else ''}\n")
    dsn = resolve_dsn(settings)
    core.web.serve(dsn, host=host, port=port, read_only=read_only, token=token, stale_after_s=settings.stale_after)


@commands.command()
def bench(
    jobs: Annotated[int, typer.Option("--jobs", min=100, help="No-op jobs for the enqueue and drain runs.")] = 20_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Drain worker concurrency.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Drain worker claim batch.")] = 500,
    dsn: Annotated[
        Optional[str], typer.Option("--dsn", help="Server to measure on [SCHED_DATABASE_URL]; a database is made.")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the benchmark database afterwards.")] = False,
    vacuum_blocked: Annotated[
        bool,
        typer.Option(
            "--vacuum-blocked",
            help="Instead: drain rounds of --jobs jobs while a long transaction holds vacuum back, side by side "
            "with the same rounds while vacuum runs.",
        ),
    ] = False,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of --vacuum-blocked.")] = 25,
    groups: Annotated[
        int,
        typer.Option(
            "--groups", min=0, help="With --vacuum-blocked: spread the jobs over this many groups (a fair queue)."
        ),
    ] = 0,
    max_running: Annotated[
        Optional[int],
        typer.Option("--max-running", min=1, help="With --vacuum-blocked: the queue's most running jobs in all."),
    ] = None,
    group_concurrency: Annotated[
        Optional[int],
        typer.Option("--group-concurrency", min=1, help="With --vacuum-blocked --groups: most running jobs per group."),
    ] = None,
    group_rate: Annotated[
        Optional[str],
        typer.Option("--group-rate", help="With --vacuum-blocked --groups: each group's rate (100/s, 30/m)."),
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Measure enqueue, drain, latency, I/O-bound efficiency and worker memory in a throwaway database."""
    for name, value in (
        ("--groups", groups),
        ("--max-running", max_running),
        ("--group-concurrency", group_concurrency),
        ("--group-rate", group_rate),
    ):
        if value and not vacuum_blocked:
            raise usage(f"{name} is a setting of --vacuum-blocked")
    if (group_concurrency or group_rate) and not groups:
        raise usage("--group-concurrency and --group-rate need --groups")
    server = dsn or resolve_dsn(load_settings())
    if vacuum_blocked:
        from pgsched import bench_vacuum

        vacuum_config = bench_vacuum.VacuumBenchConfig(
            rounds=rounds,
            jobs=jobs,
            concurrency=concurrency,
            batch_size=batch_size,
            groups=groups,
            max_running=max_running,
            group_concurrency=group_concurrency,
            group_rate=group_rate,
        )
        vacuum_config.limits()  # a bad figure is refused before any database is made
        figures = bench_vacuum.run(server, vacuum_config, lambda line: sys.stderr.write(f"- {line}\n"))
        if as_json:
            print_json(figures)
        else:
            core.render.print_vacuum_bench(figures)
        return
    config = core.bench.BenchConfig(jobs=jobs, concurrency=concurrency, batch_size=batch_size, keep_database=keep)
    figures = core.bench.run(server, config, lambda line: sys.stderr.write(f"- {line}\n"))
    if as_json:
        print_json(figures)
    else:
        core.render.print_bench(figures, core.bench.verdicts(figures["results"]))


@commands.command()
def demo(
    duration: Annotated[str, typer.Option("--duration", help="How long the worker runs.")] = "20s",
    interval: Interval = "1s",
) -> None:
    """Run a realistic demo: migrate, add a mixed workload, work it under the live dashboard, summarize."""
    dsn = resolve_dsn(load_settings())
    duration_s = parse_duration(duration, what="duration")
    interval_s = parse_duration(interval, what="interval")
    sys.stderr.write("migrating and adding the demo workload...\n")
    core.render.print_demo_summary(core.demo.run_watched(dsn, duration_s, interval_s))
