"""The dashboard fits the terminal: everything at 80x24, fewer panels and columns when it is smaller."""

from __future__ import annotations

import io
from datetime import datetime

import pytest
from rich.console import Console

from pgsched import dashboard
from pgsched.dashboard import Snapshot


def _queue(name: str, **counts: float) -> dict:
    base = dict.fromkeys(
        "waiting queued scheduled running succeeded failed cancelled finished_last_minute failed_last_hour".split(), 0
    )
    return {**base, "queue": name, "oldest_ready_age_s": 0.0, **counts}


def _snapshot(queues: int = 3) -> Snapshot:
    names = ["default", "mail", "reports-nightly-with-a-long-name"] + [f"extra{i}" for i in range(queues - 3)]
    rows = [
        _queue(
            name,
            queued=1234 * (i + 1),
            running=i,
            succeeded=123_456 * (i + 1),
            failed=7,
            scheduled=3,
            waiting=2,
            cancelled=1,
            oldest_ready_age_s=95.0,
            finished_last_minute=600,
            failed_last_hour=2,
        )
        for i, name in enumerate(names[:queues])
    ]
    return Snapshot(
        queues=rows,
        failures=[
            {
                "id": 9000 + i,
                "queue": "mail",
                "task": "send_email",
                "attempt": 3,
                "age_s": 42.0,
                "error": "SMTPServerDisconnected: Connection unexpectedly closed " * 3,
            }
            for i in range(5)
        ],
        workers=[
            {
                "id": "w1",
                "host": "worker-a.internal.example.com",
                "pid": 1234,
                "queues": ["default", "mail"],
                "concurrency": 16,
                "running": 5,
                "heartbeat_age_s": 1.5,
            },
            {
                "id": "w2",
                "host": "worker-b",
                "pid": 99,
                "queues": ["reports-nightly-with-a-long-name"],
                "concurrency": 4,
                "running": 0,
                "heartbeat_age_s": 45.0,
            },
        ],
        controls={"mail": {"paused": True, "rate": None}, "default": {"paused": False, "rate": 50.0}},
        taken_at=datetime(2026, 1, 31, 9, 30, 0),
        queries=5,
        query_ms=3.2,
    )


def _draw(snap: Snapshot, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None, file=io.StringIO())
    console.print(dashboard.fit(snap, console, 1.0))
    lines = console.export_text().rstrip("\n").split("\n")
    return lines


def test_everything_fits_80x24() -> None:
    lines = _draw(_snapshot(), 80, 24)
    text = "\n".join(lines)
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "default" in text and "mail paused" in text and "≤50/s" in text
    for header in ("ready", "run", "lag", "/s", "fail", "done", "sched", "wait", "cancel"):
        assert header in lines[1].split(), header
    assert "worker-a.internal.example.com" in text and "5/16" in text
    assert "latest failures" in text and "#9000 send_email@mail" in text
    assert "30.0 jobs/s" in lines[0] and "6 failed/1h" in lines[0] and "db 5q 3.2ms" in lines[0]


def test_narrow_terminal_drops_columns_but_keeps_the_essentials() -> None:
    lines = _draw(_snapshot(), 40, 24)
    assert all(len(line) <= 40 for line in lines), max(lines, key=len)
    header = lines[1].split()
    assert header[:3] == ["queue", "ready", "run"]
    assert "cancel" not in header and "wait" not in header
    assert any(line.startswith("mail") for line in lines)


@pytest.mark.parametrize(("height", "workers", "failures"), [(24, True, True), (10, True, False), (8, False, False)])
def test_short_terminal_drops_failures_then_workers(height: int, workers: bool, failures: bool) -> None:
    lines = _draw(_snapshot(), 80, height)
    text = "\n".join(lines)
    assert len(lines) <= height
    assert ("worker-a" in text) is workers
    assert ("latest failures" in text) is failures
    assert "default" in text


def test_many_queues_on_a_tiny_terminal_are_cut_with_a_count() -> None:
    lines = _draw(_snapshot(queues=30), 80, 10)
    assert len(lines) <= 10
    assert any("more" in line for line in lines)


def test_stale_heartbeat_and_empty_states_render() -> None:
    snap = Snapshot(taken_at=datetime(2026, 1, 1))
    text = "\n".join(_draw(snap, 80, 24))
    assert "no jobs yet" in text and "no live workers" in text


def test_database_error_is_shown_above_the_last_numbers() -> None:
    snap = _snapshot()
    snap.error = "cannot reach the database: connection refused (retrying)"
    lines = _draw(snap, 80, 24)
    assert lines[1].startswith("! cannot reach the database")


@pytest.mark.parametrize(("n", "shown"), [(999, "999"), (12_345, "12.3k"), (123_456, "123k"), (4_500_000, "4.5M")])
def test_compact_counts(n: int, shown: str) -> None:
    assert dashboard.compact(n) == shown
