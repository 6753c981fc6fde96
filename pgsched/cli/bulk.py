"""``sched purge``, and the filters that ``retry``, ``cancel`` and ``purge`` share: declared once, so the three
commands cannot drift apart, with the one way a bulk action is previewed or performed and printed."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from pgsched.cli import core
from pgsched.cli.options import JsonOutput, group, print_json, usage
from pgsched.settings import load_settings

commands = group()

States = Annotated[
    Optional[list[str]],
    typer.Option("--state", help="Only jobs in this state (repeatable; within those the command acts on)."),
]
Queue = Annotated[Optional[str], typer.Option("--queue", "-Q", help="Only jobs of this queue.", show_default=False)]
Task = Annotated[Optional[str], typer.Option("--task", help="Only jobs of this task.", show_default=False)]
ErrorLike = Annotated[
    Optional[str],
    typer.Option("--error-like", metavar="TEXT", help="Only jobs whose error contains TEXT (any case)."),
]
Since = Annotated[
    Optional[str],
    typer.Option("--since", help="Only jobs finished (live jobs: created) within this long, e.g. 1h."),
]
Group = Annotated[Optional[str], typer.Option("--group", help="Only jobs of this group.", show_default=False)]
Key = Annotated[Optional[str], typer.Option("--key", help="Only jobs with this dedupe key.", show_default=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print how many jobs match and a sample; change nothing.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, max=10_000, help="Jobs per transaction.")]


def run(action: str, options: dict[str, Any], *, dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Preview or perform ``action`` on the jobs the filter ``options`` match, and print what happened."""
    job_filter = core.bulk.build_filter(action, **options)
    with core.connect(load_settings()) as conn:
        if dry_run:
            report = core.bulk.preview(conn, action, job_filter)
        else:
            report = core.bulk.perform(conn, action, job_filter, batch_size)
    if as_json:
        print_json(report.as_json())
    elif dry_run:
        _print_preview(report)
    else:
        _print_done(report)


def _print_preview(report: Any) -> None:
    verb = {"retry": "retry", "cancel": "cancel", "purge": "delete"}[report.action]
    sys.stdout.write(f"{report.matched} job(s) match; --dry-run: nothing changed (without it: {verb} them)\n")
    for job in report.sample:
        error = f"  {job['error']}" if job["error"] else ""
        sys.stdout.write(f"{job['id']}  {job['queue']}  {job['task']}  {job['state']}{error}\n")
    if report.matched > len(report.sample):
        sys.stdout.write(f"... and {report.matched - len(report.sample)} more\n")


def _print_done(report: Any) -> None:
    sys.stdout.write(core.bulk.summary(report) + "\n")


@commands.command()
def purge(
    state: States = None,
    queue: Queue = None,
    task: Task = None,
    error_like: ErrorLike = None,
    since: Since = None,
    job_group: Group = None,
    key: Key = None,
    dry_run: DryRun = False,
    batch_size: BatchSize = 500,
    as_json: JsonOutput = False,
) -> None:
    """Delete the succeeded, failed or cancelled jobs that match the filters (at least one), in batches; never a
    live job. A failed or cancelled job that a remaining job depends on is kept."""
    options = {
        "states": state,
        "queue": queue,
        "task": task,
        "error_like": error_like,
        "since": since,
        "group": job_group,
        "key": key,
    }
    if not core.bulk.filters_given(options):
        raise usage("give at least one filter: --state, --queue, --task, --error-like, --since, --group or --key")
    run("purge", options, dry_run=dry_run, batch_size=batch_size, as_json=as_json)
