"""Tick arithmetic across daylight-saving changes: a wall-clock time that comes twice fires once, a time that
does not exist fires at the first moment after it, and an hourly expression keeps its interval in real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from pgsched.schedules import due_ticks, next_tick


def ticks(cron: str, start: datetime, count: int, tz: str = "Europe/Berlin") -> list[datetime]:
    found = []
    for _ in range(count):
        start = next_tick(cron, tz, start)
        found.append(start)
    return found


def test_a_daily_time_in_the_repeated_hour_fires_once() -> None:
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET, so 02:30 happens at 00:30 and at 01:30 UTC.
    fired = ticks("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    assert fired == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
    ]


def test_catch_up_all_over_the_repeated_hour_fires_the_time_once() -> None:
    due_at = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    fired, upcoming = due_ticks("30 2 * * *", "Europe/Berlin", "all", due_at, datetime(2026, 10, 25, 6, tzinfo=UTC))
    assert (fired, upcoming) == ([due_at], datetime(2026, 10, 26, 1, 30, tzinfo=UTC))


def test_latest_catch_up_after_the_repeated_hour_does_not_fire_it_again() -> None:
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # The 00:30 UTC tick fired; the schedule's next run is the next day, whenever the ticker looks.
    assert next_tick("30 2 * * *", "Europe/Berlin", first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    fired, _ = due_ticks(
        "30 2 * * *", "Europe/Berlin", "latest", first, datetime(2026, 10, 25, 1, 45, tzinfo=UTC), last_tick=None
    )
    assert fired == [first]


def test_an_hourly_expression_keeps_its_interval_through_the_repeated_hour() -> None:
    fired = ticks("*/30 * * * *", datetime(2026, 10, 24, 23, 50, tzinfo=UTC), 6)
    assert [b - a for a, b in pairwise(fired)] == [timedelta(minutes=30)] * 5


def test_a_time_skipped_in_spring_fires_at_the_first_moment_after_it() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    assert next_tick("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC)) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )


def test_ticks_at_or_before_the_last_fired_one_are_never_returned() -> None:
    due_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = due_at + timedelta(minutes=3, seconds=5)
    fired, upcoming = due_ticks("* * * * *", "UTC", "all", due_at, now, last_tick=due_at + timedelta(minutes=1))
    assert fired == [due_at + timedelta(minutes=2), due_at + timedelta(minutes=3)]
    assert upcoming == due_at + timedelta(minutes=4)
