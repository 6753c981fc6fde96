"""What people read (Rich tables of the status summary, a job's detail, schedules, queues, doctor, bench, demo)
and the JSON shapes the CLI prints for jobs and schedules."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pgsched.durations import format_duration

STATE_STYLES = {
    "waiting": "magenta",
    "queued": "cyan",
    "scheduled": "blue",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


_SHORT_STATE_HEADINGS = (
    ("waiting", "wait"),
    ("queued", "ready"),
    ("scheduled", "sched"),
    ("running", "run"),
    ("succeeded", "ok"),
    ("failed", "fail"),
    ("cancelled", "cancel"),
)


def iso(value: datetime | None) -> str | None:
    """An ISO 8601 timestamp, or None."""
    return value.isoformat() if value is not None else None


_JOB_JSON_FIELDS = (
    "id queue task group state attempt max_attempts priority run_at created_at started_at finished_at payload result "
    "error progress depends_on trace_context why"
).split()


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    """One job as ``sched status ID --json`` prints it."""
    shaped = {name: job.get(name) for name in _JOB_JSON_FIELDS}
    for name in ("run_at", "created_at", "started_at", "finished_at"):
        shaped[name] = iso(shaped[name])
    shaped["depends_on"] = list(shaped["depends_on"] or [])
    return shaped


def schedule_json(schedule: dict[str, Any]) -> dict[str, Any]:
    """One schedule as ``sched schedule list --json`` prints it."""
    return {**schedule, **{k: iso(schedule[k]) for k in ("next_run_at", "last_tick", "created_at")}}


Item = TypeVar("Item")


def progress(items: Sequence[Item], description: str) -> Iterable[Item]:
    """``items``, with a transient progress bar on stderr while the caller goes through them."""
    from rich.progress import track

    return track(items, description=description, transient=True)


def queue_table(queues: list[dict[str, Any]]) -> Table:
    """Per-queue counts by state, with the lag."""
    table = Table(title="queues", title_justify="left", expand=False, pad_edge=False)
    table.add_column("queue", no_wrap=True, overflow="ellipsis", min_width=8)
    # Short headings keep the table within 80 columns.
    for state, heading in _SHORT_STATE_HEADINGS:
        table.add_column(heading, justify="right", style=STATE_STYLES[state])
    table.add_column("lag", justify="right")
    for q in queues:
        table.add_row(
            q["queue"],
            *(str(q[s]) for s in ("waiting", "queued", "scheduled", "running", "succeeded", "failed", "cancelled")),
            format_duration(q["oldest_ready_age_s"]) if q["oldest_ready_age_s"] else "-",
        )
    return table


def worker_table(workers: list[dict[str, Any]]) -> Table:
    """Live workers with their load and heartbeat age."""
    table = Table(title="workers", title_justify="left", pad_edge=False)
    table.add_column("host", overflow="fold")
    table.add_column("pid", justify="right")
    table.add_column("queues", overflow="fold")
    table.add_column("running", justify="right")
    table.add_column("heartbeat", justify="right")
    for w in workers:
        table.add_row(
            w["host"],
            str(w["pid"]),
            ",".join(w["queues"]),
            f"{w['running']}/{w['concurrency']}",
            format_duration(max(w["heartbeat_age_s"], 0.0)) + " ago",
        )
    return table


def print_summary(queues: list[dict[str, Any]], workers: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print the status summary tables."""
    console = console or Console()
    if not queues:
        console.print("no jobs yet")
    else:
        console.print(queue_table(queues))
    if workers:
        console.print(worker_table(workers))
    else:
        console.print("no live workers")


def print_job(job: dict[str, Any], console: Console | None = None) -> None:
    """Print one job's detail as a two-column table."""
    console = console or Console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    state = job["state"]
    for name in ("id", "queue", "task"):
        table.add_row(name, str(job[name]))
    if job.get("group") is not None:
        table.add_row("group", str(job["group"]))
    table.add_row("state", f"[{STATE_STYLES.get(state, '')}]{state}[/]")
    table.add_row("attempt", f"{job['attempt']} of {job['max_attempts']}")
    table.add_row("priority", str(job["priority"]))
    for name in ("run_at", "created_at", "started_at", "finished_at"):
        if job.get(name) is not None:
            table.add_row(name, iso(job[name]) or "")
    if job.get("depends_on"):
        table.add_row("depends on", ", ".join(str(i) for i in job["depends_on"]))
    for name in ("payload", "result", "progress"):
        if job.get(name) is not None:
            table.add_row(name, json.dumps(job[name], ensure_ascii=False))
    if job.get("error"):
        table.add_row("error", job["error"], style="red")
    if job.get("trace_context"):
        table.add_row("trace", trace_line(job["trace_context"]))
    if job.get("why"):
        table.add_row("why", job["why"])
    console.print(table, highlight=False, markup=True)


def trace_line(context: dict[str, Any]) -> str:
    """What names the trace a job was added in, on one line."""
    # The traceparent names the trace and the span that added the job, what a tracing UI is searched by; any other
    # propagation fields (tracestate, baggage) are in --json.
    traceparent = context.get("traceparent")
    return traceparent if isinstance(traceparent, str) else json.dumps(context, ensure_ascii=False)


def print_schedules(schedules: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print schedules with their expression, target and next run."""
    console = console or Console()
    if not schedules:
        console.print("no schedules")
        return
    table = Table(title="schedules", title_justify="left", pad_edge=False)
    for name in ("name", "cron", "tz", "task", "queue", "catch-up", "next run", "last tick", "source"):
        table.add_column(name, overflow="fold")
    for s in schedules:
        table.add_row(
            s["name"],
            s["cron"],
            s["tz"],
            s["task"],
            s["queue"],
            s["catch_up"],
            iso(s["next_run_at"]),
            iso(s["last_tick"]) or "-",
            s["source"],
        )
    console.print(table, highlight=False, markup=False)


def print_queue_settings(queues: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print queues with their controls (paused, rate limit, bucket level, backlog cap, concurrency limits) and
    load."""
    console = console or Console()
    if not queues:
        console.print("no queues yet")
        return
    table = Table(title="queues", title_justify="left", pad_edge=False)
    table.add_column("queue", overflow="fold")
    table.add_column("paused")
    table.add_column("rate", justify="right")
    table.add_column("burst", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("max backlog", justify="right")
    table.add_column("max running", justify="right")
    table.add_column("per group", justify="right")
    table.add_column("group rate", justify="right")
    table.add_column("fair")
    table.add_column("queued", justify="right", style=STATE_STYLES["queued"])
    table.add_column("running", justify="right", style=STATE_STYLES["running"])
    for q in queues:
        table.add_row(
            q["queue"],
            "yes" if q["paused"] else "no",
            f"{q['rate']:g}/s" if q["rate"] is not None else "-",
            f"{q['burst']:g}" if q["burst"] is not None else "-",
            f"{q['tokens']:.1f}" if q["tokens"] is not None else "-",
            str(q["max_backlog"]) if q["max_backlog"] is not None else "-",
            str(q["max_running"]) if q.get("max_running") is not None else "-",
            str(q["group_concurrency"]) if q.get("group_concurrency") is not None else "-",
            f"{q['group_rate']:g}/s burst {q['group_burst']:g}" if q.get("group_rate") is not None else "-",
            "yes" if q.get("fair", True) else "no",
            str(q["queued"]),
            str(q["running"]),
        )
    console.print(table, highlight=False, markup=False)


DOCTOR_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def print_doctor(report: Any, console: Console | None = None) -> None:
    """Print the doctor's checks: status, what was found, and what to do about problems."""
    console = console or Console()
    table = Table(pad_edge=False, show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("found / what to do", overflow="fold", ratio=1)
    for check in report.checks:
        text = escape(check.detail)
        if check.fix and check.status != "ok":
            text += f"\n[italic]→ {escape(check.fix)}[/]"
        table.add_row(check.name, f"[{DOCTOR_STYLES.get(check.status, '')}]{check.status}[/]", text)
    console.print(table, highlight=False)


_BENCH_ROWS = (
    ("bulk_enqueue_per_s", "bulk enqueue, Client.enqueue_many", "jobs/s"),
    ("copy_baseline_per_s", "  baseline: COPY of prebuilt jobs", "jobs/s"),
    ("jsonl_cli_enqueue_per_s", "bulk enqueue, sched add --jsonl", "jobs/s"),
    ("single_enqueue_per_s", "single enqueue, Client.enqueue", "jobs/s"),
    ("commit_baseline_per_s", "  baseline: bare one-row commits", "rows/s"),
    ("single_enqueue_async_commit_per_s", "single enqueue, durable=False", "jobs/s"),
    ("single_enqueue_concurrent_per_s", "single enqueue, concurrent producers", "jobs/s"),
    ("drain_per_s", "drain, one worker process", "jobs/s"),
    ("sql_baseline_per_s", "  baseline: pure-SQL claim/complete", "jobs/s"),
    ("latency_p50_ms", "latency enqueue->start p50", "ms"),
    ("latency_p99_ms", "latency enqueue->start p99", "ms"),
    ("io_per_s", "I/O-bound, 20 ms sleeps", "jobs/s"),
    ("io_efficiency_pct", "  efficiency vs ideal", "%"),
    ("io_free_slots_only_efficiency_pct", "  baseline: --no-claim-ahead", "%"),
    ("idle_worker_rss_mb", "idle worker RSS", "MB"),
)


def print_bench(figures: dict[str, Any], verdicts: dict[str, bool], console: Console | None = None) -> None:
    """Print benchmark figures beside their targets."""
    console = console or Console()
    machine = figures["machine"]
    table = Table(
        title=f"sched bench: {machine['cores']} cores, PostgreSQL {machine['postgres']}, Python {machine['python']}",
        title_justify="left",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    results, targets = figures["results"], figures["targets"]
    for key, label, unit in _BENCH_ROWS:
        if key not in results:
            continue
        value = results[key]
        shown = f"{value:,.0f} {unit}" if unit.endswith("/s") else f"{value:g} {unit}"
        target = targets.get(key)
        goal = f"{target['op']} {target['value']:,g}" if target else ""
        mark = "" if key not in verdicts else ("[green]ok[/]" if verdicts[key] else "[red]miss[/]")
        table.add_row(label, shown, goal, mark)
    console.print(table)


def print_vacuum_bench(figures: dict[str, Any], console: Console | None = None) -> None:
    """Drain rates per round with vacuum held back and with vacuum working, side by side."""
    console = console or Console()
    config = figures["config"]
    table = Table(
        title=f"sched bench --vacuum-blocked: {config['jobs_per_round']:,} jobs per round"
        + (f" in {config['groups']:,} groups" if config.get("groups") else "")
        + (f", at most {config['max_running']:,} running" if config.get("max_running") else "")
        + (f", at most {config['group_concurrency']:,} running per group" if config.get("group_concurrency") else "")
        + (f", each group at {config['group_rate']}" if config.get("group_rate") else ""),
        title_justify="left",
    )
    for name in ("jobs before", "vacuumed", "held back", "held / vacuumed", "dead row versions", "table + indexes"):
        table.add_column(name, justify="right")
    for row in figures["rounds"]:
        table.add_row(
            f"{row['jobs_before']:,}",
            f"{row['vacuumed_per_s']:,} /s",
            f"{row['held_per_s']:,} /s",
            f"{row['held_vs_vacuumed_pct']}%",
            f"{row['held_dead_tuples']:,}",
            f"{row['held_table_mb'] + row['held_index_mb']:,.1f} MB",
        )
    console.print(table)
    latency, after = figures["latency_ms"], figures["after_vacuum"]
    console.print(
        f"held back / vacuumed, median of the last rounds: {figures['held_vs_vacuumed_pct_last_rounds']}%\n"
        f"enqueue-to-start p50/p99: vacuumed {latency['vacuumed']['p50']}/{latency['vacuumed']['p99']} ms, "
        f"held back {latency['held']['p50']}/{latency['held']['p99']} ms",
        highlight=False,
    )
    for number, sizes in enumerate(after, start=1):
        console.print(
            f"after the snapshot ended, VACUUM and round {number}: table {sizes['table_mb'][0]} -> "
            f"{sizes['table_mb'][1]} MB, indexes {sizes['index_mb'][0]} -> {sizes['index_mb'][1]} MB (ready index "
            f"{sizes['ready_index_mb'][0]} -> {sizes['ready_index_mb'][1]} MB); history of succeeded jobs "
            f"{sizes['history_mb'][0]} -> {sizes['history_mb'][1]} MB",
            highlight=False,
        )


def print_demo_summary(result: dict[str, Any], console: Console | None = None) -> None:
    """What the demo did, per task, and where to look next."""
    console = console or Console()
    table = Table(title="demo summary", title_justify="left")
    table.add_column("task", no_wrap=True)
    table.add_column("succeeded", justify="right", style=STATE_STYLES["succeeded"])
    table.add_column("failed", justify="right", style=STATE_STYLES["failed"])
    table.add_column("not done", justify="right")
    table.add_column("attempts", justify="right")
    for row in result["tasks"]:
        pending = sum(row[s] for s in ("waiting", "queued", "scheduled", "running", "cancelled"))
        table.add_row(row["task"], str(row["succeeded"]), str(row["failed"]), str(pending), str(row["attempts"]))
    console.print(table)
    ids = result["ids"]
    console.print(
        f"Try: [bold]sched status {ids['upload']}[/] (ran after the backup), "
        f"[bold]sched status {ids['report']}[/] (fan-in of 10 pages), "
        f"[bold]sched status {ids['declined']}[/] (failed after retries), "
        f"[bold]sched status {ids['cleanup']}[/] (scheduled a minute out). "
        f"Worker log: {result['worker_log']}"
    )
