"""An @ alias names its hour as surely as five fields do: where clocks go back at 01:00 to midnight (Cuba), a
daily schedule written @daily fires once that night, as "0 0 * * *" does (docs/protocol.md, "Schedules")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pgsched.schedules import next_tick


def ticks(cron: str, start: datetime, count: int, tz: str) -> list[datetime]:
    found = []
    for _ in range(count):
        start = next_tick(cron, tz, start)
        found.append(start)
    return found


@pytest.mark.parametrize("alias", ["@daily", "@midnight", "@DAILY"])
def test_a_daily_alias_fires_once_on_the_night_midnight_comes_twice(alias: str) -> None:
    # 2026-11-01: Havana goes from 01:00 CDT back to 00:00 CST, so midnight happens at 04:00 and at 05:00 UTC.
    start = datetime(2026, 10, 30, 12, tzinfo=UTC)
    expected = ticks("0 0 * * *", start, 4, "America/Havana")
    assert expected[1:3] == [datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC)]
    assert ticks(alias, start, 4, "America/Havana") == expected


def test_the_hourly_alias_keeps_its_interval_in_real_time() -> None:
    start = datetime(2026, 11, 1, 3, 30, tzinfo=UTC)
    assert ticks("@hourly", start, 3, "America/Havana") == ticks("0 * * * *", start, 3, "America/Havana")
