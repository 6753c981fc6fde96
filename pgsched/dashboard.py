"""The live dashboard of ``sched status --watch``: a few cheap read models per refresh, drawn with Rich to fit
the terminal, dropping the less important panels and columns when it is small."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pgsched import repository
from pgsched.db import Connection
from pgsched.durations import format_duration
from pgsched.errors import SchedError
from pgsched.repository import reads

FAILURES_SHOWN = 5
GROUPS_SHOWN = 5
_QUEUE_FIELDS = (
    "queue waiting queued scheduled running succeeded failed cancelled oldest_ready_age_s "
    "finished_last_minute failed_last_hour"
).split()  # the keys of each queue's dict
T = TypeVar("T")


@dataclass
class Snapshot:
    """What one refresh read, and what reading it cost the database."""

    queues: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each queue's busiest groups (docs/protocol.md, "Groups"): queue, group_name, running, ready.
    groups: list[dict[str, Any]] = field(default_factory=list)
    taken_at: datetime = field(default_factory=datetime.now)
    queries: int = 0
    query_ms: float = 0.0
    error: str | None = None

    @property
    def per_second(self) -> float:
        """Jobs finished per second over the last minute, all queues together."""
        return sum(q["finished_last_minute"] for q in self.queues) / 60.0

    @property
    def failed_last_hour(self) -> int:
        """Final failures in the last hour, all queues together."""
        return sum(q["failed_last_hour"] for q in self.queues)


class Reader:
    """Runs the dashboard's read models on one connection, counting them and timing them.

    Live counts, throughput and failures are read at every refresh through partial indexes; the all-time
    totals need a scan of the whole table, so they are re-read only every ``totals_every_s`` seconds."""

    def __init__(self, conn: Connection, queue: str | None = None, totals_every_s: float = 10.0) -> None:
        self.conn = conn
        self.queue = queue
        self.totals_every_s = totals_every_s
        self.queries = 0
        self.seconds = 0.0
        self._totals: dict[str, reads.QueueTotals] = {}
        self._totals_at = float("-inf")
        # sched_queues arrived with a later migration; an older schema simply has no controls to mark.
        self.has_controls = self._read(reads.table_exists, self.conn, "sched_queues")
        # Likewise the busiest groups, read with the group buckets' migration or later.
        self.has_group_rates = self._read(reads.table_exists, self.conn, "sched_group_buckets")

    def _read(self, read: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return read(*args)
        finally:
            self.queries += 1
            self.seconds += time.perf_counter() - started

    def snapshot(self) -> Snapshot:
        """Read everything one refresh shows."""
        self.queries, self.seconds = 0, 0.0
        conn, queue = self.conn, self.queue
        if time.monotonic() - self._totals_at >= self.totals_every_s:
            self._totals = {t.queue: t for t in self._read(reads.queue_totals, conn, queue)}
            self._totals_at = time.monotonic()
        live = {q.queue: q for q in self._read(reads.queue_live, conn, queue)}
        recent = {q.queue: q for q in self._read(reads.queue_recent, conn, queue)}
        queues = []
        for name in sorted(set(live) | set(recent) | set(self._totals)):
            now = live.get(name, reads.QueueLive(name, 0, 0, 0, 0.0))
            lately = recent.get(name, reads.QueueRecent(name, 0, 0))
            totals = self._totals.get(name, reads.QueueTotals(name, 0, 0, 0, 0))
            queues.append({**asdict(totals), **asdict(now), **asdict(lately)})
        failures: list[dict[str, Any]] = []
        if any(q["failed_last_hour"] for q in queues):
            failures = [asdict(f) for f in self._read(reads.recent_failures, conn, queue, FAILURES_SHOWN)]
        workers = self._read(repository.list_workers, conn)
        if queue is not None:
            workers = [w for w in workers if queue in w["queues"]]
        controls: dict[str, dict[str, Any]] = {}
        if self.has_controls:
            for control in self._read(reads.queue_controls, conn):
                if queue is None or control.queue == queue:
                    controls[control.queue] = {"paused": control.paused, "rate": control.rate}
        _add_controlled_queues(queues, controls)
        groups: list[dict[str, Any]] = []
        busy = [q["queue"] for q in queues if q["running"] or q["queued"]]
        if self.has_group_rates and busy:
            groups = [asdict(g) for g in self._read(reads.busiest_groups, conn, busy, GROUPS_SHOWN)]
        return Snapshot(queues, failures, workers, controls, groups, queries=self.queries, query_ms=self.seconds * 1000)


def _add_controlled_queues(queues: list[dict[str, Any]], controls: dict[str, dict[str, Any]]) -> None:
    # A paused queue with no jobs yet still deserves its row: someone paused it on purpose.
    known = {q["queue"] for q in queues}
    for name in sorted(set(controls) - known):
        queues.append({f: 0 for f in _QUEUE_FIELDS} | {"queue": name, "oldest_ready_age_s": 0.0})
    queues.sort(key=lambda q: q["queue"])


# --- rendering --------------------------------------------------------------------------------------------


def compact(n: int) -> str:
    """A count in at most five characters: 999, 12.3k, 4.5M."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k" if n < 100_000 else f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M"


def _rate(per_s: float) -> str:
    if per_s == 0:
        return "0"
    return f"{per_s:.2f}" if per_s < 10 else f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


# Columns of the queue table from most to least important; narrow terminals keep a prefix of the extras.
_QUEUE_COLUMNS: list[tuple[str, str, str, Callable[[dict[str, Any]], str]]] = [
    ("ready", "cyan", "queued", lambda q: compact(q["queued"])),
    ("run", "yellow", "running", lambda q: compact(q["running"])),
    ("lag", "", "lag", lambda q: format_duration(q["oldest_ready_age_s"]) if q["oldest_ready_age_s"] else "-"),
    ("/s", "", "rate", lambda q: _rate(q["finished_last_minute"] / 60.0)),
    ("fail", "red", "failed", lambda q: compact(q["failed"])),
    ("done", "green", "succeeded", lambda q: compact(q["succeeded"])),
    ("sched", "blue", "scheduled", lambda q: compact(q["scheduled"])),
    ("wait", "magenta", "waiting", lambda q: compact(q["waiting"])),
    ("cancel", "dim", "cancelled", lambda q: compact(q["cancelled"])),
]


def _flags(control: dict[str, Any] | None) -> str:
    if not control:
        return ""
    marks = []
    if control["paused"]:
        marks.append("[bold yellow]paused[/]")
    if control["rate"] is not None:
        marks.append(f"[blue]≤{control['rate']:g}/s[/]")
    return " " + " ".join(marks)


def queue_table(snap: Snapshot, width: int, max_rows: int | None = None) -> Table:
    """Per-queue counts, lag and throughput, with as many columns as ``width`` leaves room for."""
    rows = snap.queues if max_rows is None else snap.queues[:max_rows]
    names = [f"{escape(q['queue'])}{_flags(snap.controls.get(q['queue']))}" for q in rows]
    values = [[value(q) for _h, _s, _n, value in _QUEUE_COLUMNS] for q in rows]
    # Drop the least important columns until the queue names get a readable share of the width.
    name_room = min(max([Text.from_markup(n).cell_len for n in names] + [8]), 16)
    for extras in range(len(_QUEUE_COLUMNS), 1, -1):
        used = sum(
            max([len(header)] + [len(v[i]) for v in values]) + 2
            for i, (header, _s, _n, _v) in enumerate(_QUEUE_COLUMNS[:extras])
        )
        if width - used >= name_room:
            break
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    table.add_column("queue", no_wrap=True, overflow="ellipsis", max_width=max(width - used, 6))
    for header, style, _name, _value in _QUEUE_COLUMNS[:extras]:
        table.add_column(header, justify="right", style=style, no_wrap=True)
    for name, cells in zip(names, values, strict=True):
        table.add_row(name, *cells[:extras])
    hidden = len(snap.queues) - len(rows)
    if hidden > 0:
        table.add_row(f"[dim]+{hidden} more[/]")
    return table


def group_table(snap: Snapshot, width: int) -> Table:
    """Each queue's busiest groups: running and ready jobs per group (ready counted up to 1,000)."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("queue", no_wrap=True, overflow="ellipsis", max_width=max(8, width // 4))
    table.add_column("group", no_wrap=True, overflow="ellipsis", max_width=max(10, width - 40))
    table.add_column("run", justify="right", no_wrap=True)
    table.add_column("ready", justify="right", no_wrap=True)
    for g in snap.groups:
        ready = f"{compact(g['ready'])}+" if g["ready"] >= 1000 else compact(g["ready"])
        table.add_row(escape(g["queue"]), escape(g["group_name"]), compact(g["running"]), ready)
    return table


def worker_table(snap: Snapshot, width: int) -> Table:
    """Live workers: host, pid, load against concurrency, heartbeat age (and queues when there is room)."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("worker", no_wrap=True, overflow="ellipsis", max_width=max(10, width - 40))
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("run", justify="right", no_wrap=True)
    table.add_column("beat", justify="right", no_wrap=True)
    wide = width >= 60
    if wide:
        table.add_column("queues", no_wrap=True, overflow="ellipsis")
    for w in snap.workers:
        beat_s = max(w["heartbeat_age_s"], 0.0)
        beat = format_duration(beat_s)
        if beat_s > 30:
            beat = f"[red]{beat}[/]"
        cells = [escape(w["host"]), str(w["pid"]), f"{w['running']}/{w['concurrency']}", beat]
        if wide:
            cells.append(escape(",".join(w["queues"])))
        table.add_row(*cells)
    return table


def failure_lines(snap: Snapshot, limit: int) -> list[Text]:
    """The latest errors, one line each, clipped to the width when drawn."""
    lines = []
    for f in snap.failures[:limit]:
        error = " ".join(f["error"].split()) or "failed"
        line = Text.from_markup(
            f"[red]#{f['id']}[/] {escape(f['task'])}@{escape(f['queue'])} "
            f"[dim]{format_duration(max(f['age_s'], 0.0))} ago[/] {escape(error)}"
        )
        line.no_wrap = True
        line.overflow = "ellipsis"
        lines.append(line)
    return lines


def header(snap: Snapshot, interval_s: float) -> Text:
    """One line: time, refresh interval, throughput, failures, workers, and what the refresh cost."""
    text = Text.from_markup(
        f"[bold]sched[/] {snap.taken_at:%H:%M:%S} /{format_duration(interval_s)} · "
        f"{_rate(snap.per_second)} jobs/s · [red]{snap.failed_last_hour}[/] failed/1h · "
        f"{len(snap.workers)} worker{'' if len(snap.workers) == 1 else 's'} · "
        f"[dim]db {snap.queries}q {snap.query_ms:.1f}ms[/]"
    )
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _title(label: str) -> Text:
    return Text(label, style="bold underline")


def layouts(snap: Snapshot, width: int, interval_s: float) -> list[RenderableType]:
    """Candidate screens, richest first; the caller draws the first that fits the terminal's height."""
    top: list[RenderableType] = [header(snap, interval_s)]
    if snap.error:
        top.append(Text(f"! {snap.error}", style="bold red", no_wrap=True, overflow="ellipsis"))
    queues: RenderableType = queue_table(snap, width) if snap.queues else Text("no jobs yet", style="dim")
    workers: RenderableType = worker_table(snap, width) if snap.workers else Text("no live workers", style="yellow")
    failures = failure_lines(snap, FAILURES_SHOWN)
    groups: list[RenderableType] = [_title("busiest groups"), group_table(snap, width)] if snap.groups else []
    candidates: list[list[RenderableType]] = []
    if failures:
        candidates.append([*top, queues, *groups, _title("workers"), workers, _title("latest failures"), *failures])
        candidates.append([*top, queues, _title("workers"), workers, _title("latest failures"), *failures])
        candidates.append([*top, queues, _title("workers"), workers, _title("latest failures"), *failures[:1]])
    if groups:
        candidates.append([*top, queues, *groups, _title("workers"), workers])
    candidates.append([*top, queues, _title("workers"), workers])
    candidates.append([*top, queues])
    return [Group(*parts) for parts in candidates]


def fit(snap: Snapshot, console: Console, interval_s: float) -> RenderableType:
    """The richest layout that fits ``console``; at worst the queue table cut to the height."""
    width, height = console.size
    options = console.options.update(width=width)
    for candidate in layouts(snap, width, interval_s):
        if len(console.render_lines(candidate, options, pad=False)) <= height:
            return candidate
    # Header, optional error line, table header, the "+N more" row.
    room = max(height - 3 - (1 if snap.error else 0), 1)
    parts: list[RenderableType] = [header(snap, interval_s)]
    if snap.error:
        parts.append(Text(f"! {snap.error}", style="bold red", no_wrap=True, overflow="ellipsis"))
    parts.append(queue_table(snap, width, max_rows=room))
    return Group(*parts)


def watch(
    connect: Callable[[], Connection],
    interval_s: float,
    queue: str | None = None,
    console: Console | None = None,
    refreshes: int | None = None,
) -> None:
    """Redraw the dashboard every ``interval_s`` until Ctrl-C (or ``refreshes`` draws); the terminal is restored."""
    import signal

    from rich.live import Live

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    console = console or Console()
    reader: Reader | None = None
    last = Snapshot()
    drawn = 0
    # SIGTERM (kill, a closing tmux pane) ends the dashboard like Ctrl-C, so the terminal is restored.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with Live(console=console, screen=console.is_terminal, auto_refresh=False, transient=False) as live:
            while refreshes is None or drawn < refreshes:
                started = time.monotonic()
                try:
                    if reader is None:
                        reader = Reader(connect(), queue)
                    last = reader.snapshot()
                except SchedError as exc:
                    # Keep showing the last numbers while the database is away; reconnect next time.
                    last.error = f"{exc.message} (retrying)"
                    last.taken_at = datetime.now()
                    if reader is not None:
                        reader.conn.close()
                    reader = None
                live.update(fit(last, console, interval_s), refresh=True)
                drawn += 1
                if refreshes is None or drawn < refreshes:
                    time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if reader is not None:
            reader.conn.close()
