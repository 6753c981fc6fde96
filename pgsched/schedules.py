"""Recurring schedules: validating a cron expression and zone (with croniter, never by hand) and working out
which ticks are due and when the next one comes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from pgsched.errors import InvalidInput
from pgsched.models import check_queue, check_task

SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CATCH_UP_MODES = ("latest", "all", "none")
# With catch-up "all", a schedule that stood still for a long time enqueues at most this many ticks per pass.
MAX_TICKS_PER_FIRE = 1000
# With catch-up "none", a tick still counts as on time (not missed) for this long.
ON_TIME_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule: run ``task`` on ``queue`` with ``payload_json`` at each tick of ``cron`` in ``tz``."""

    name: str
    cron: str
    task: str
    queue: str = "default"
    payload_json: str = "{}"
    tz: str = "UTC"
    catch_up: str = "latest"


def check_schedule_name(name: str) -> str:
    """Return ``name`` if it is a valid schedule name."""
    if not isinstance(name, str) or not SCHEDULE_NAME.fullmatch(name):
        raise InvalidInput(f"invalid schedule name {name!r}: use 1-64 letters, digits or _ . : -")
    return name


def check_cron(expr: str) -> str:
    """Return ``expr`` normalised to single spaces if croniter accepts it as a five-field cron expression."""
    if not isinstance(expr, str):
        raise InvalidInput(f"invalid cron expression {expr!r}")
    normalised = " ".join(expr.split())
    # Five fields (or an @ alias): croniter's optional seconds field would make "* * * * * *" tick every second.
    fields = normalised.split(" ")
    if not normalised or (len(fields) != 5 and not (len(fields) == 1 and normalised.startswith("@"))):
        raise InvalidInput(f"invalid cron expression {expr!r}: use five fields, e.g. '*/5 * * * *'")
    try:
        valid = croniter.is_valid(normalised)
        if valid:
            croniter(normalised, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError):
        valid = False
    if not valid:
        raise InvalidInput(
            f"invalid cron expression {expr!r}: minute hour day month weekday, each in range, e.g. '*/5 * * * *'"
        )
    return normalised


def check_zone(name: str) -> str:
    """Return ``name`` if it is an IANA time zone."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Paris") from None
    return name


def check_catch_up(mode: str) -> str:
    """Return ``mode`` if it is a catch-up policy."""
    if mode not in CATCH_UP_MODES:
        raise InvalidInput(f"invalid catch-up {mode!r}: use latest, all or none")
    return mode


def build_schedule(
    name: str,
    cron: str,
    task: str,
    *,
    queue: str = "default",
    payload_json: str = "{}",
    tz: str = "UTC",
    catch_up: str = "latest",
) -> ScheduleSpec:
    """Validate the parts of a schedule into a ScheduleSpec."""
    return ScheduleSpec(
        name=check_schedule_name(name),
        cron=check_cron(cron),
        task=check_task(task),
        queue=check_queue(queue),
        payload_json=payload_json,
        tz=check_zone(tz),
        catch_up=check_catch_up(catch_up),
    )


def next_tick(cron: str, tz: str, after: datetime) -> datetime:
    """The first tick of ``cron`` in zone ``tz`` strictly after ``after``, in UTC. A wall-clock time that comes
    twice (the hour the clocks go back) fires once, at its first occurrence, unless the expression runs every
    hour anyway (its hour field is ``*``): then it keeps its interval in real time, as cron does."""
    ticks = croniter(cron, after.astimezone(ZoneInfo(tz)))
    while True:
        tick = ticks.get_next(datetime)
        if not _repeated_wall_clock(tick, cron):
            return tick.astimezone(UTC)


def _prev_tick(cron: str, tz: str, before: datetime) -> datetime:
    """The last tick of ``cron`` in zone ``tz`` at or before ``before`` (as croniter steps back), in UTC, with
    the same rule for repeated wall-clock times as ``next_tick``."""
    ticks = croniter(cron, before.astimezone(ZoneInfo(tz)))
    while True:
        tick = ticks.get_prev(datetime)
        if not _repeated_wall_clock(tick, cron):
            return tick.astimezone(UTC)


def _repeated_wall_clock(tick: datetime, cron: str) -> bool:
    """Whether ``tick`` is the second occurrence of its wall-clock time (clocks went back), for an expression
    that names its hours."""
    fields = cron.split(" ")
    # An @ alias names hour 0 (@daily, @weekly, ...), except @hourly, which runs every hour.
    hour_field = fields[1] if len(fields) > 1 else ("*" if cron.lower() == "@hourly" else "0")
    if hour_field == "*":
        return False
    wall = tick.replace(tzinfo=None)
    zone = tick.tzinfo
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return first != second and tick.astimezone(UTC) == second


def due_ticks(
    cron: str, tz: str, catch_up: str, due_at: datetime, now: datetime, last_tick: datetime | None = None
) -> tuple[list[datetime], datetime]:
    """The ticks to enqueue for a schedule whose next tick ``due_at`` has come, and its next run afterwards.

    "latest" runs only the newest missed tick (one catch-up job, not a flood); "none" runs the newest tick only
    if it is less than ON_TIME_WINDOW late; "all" runs every missed tick, at most MAX_TICKS_PER_FIRE per pass
    (the returned next run is then still due, and the next pass goes on from there). A tick at or before
    ``last_tick`` (the newest one fired) is never returned: the schedule moves past it instead of waiting for a
    fire that the database would refuse (docs/protocol.md, "Schedules")."""
    if catch_up == "all":
        ticks = [due_at]
        upcoming = next_tick(cron, tz, due_at)
        while upcoming <= now and len(ticks) < MAX_TICKS_PER_FIRE:
            ticks.append(upcoming)
            upcoming = next_tick(cron, tz, upcoming)
        return _after(ticks, last_tick), upcoming
    # Step back from now rather than forward from due_at: a schedule idle for a year must not walk every tick.
    latest = _prev_tick(cron, tz, now)
    if next_tick(cron, tz, latest) <= now:
        latest = next_tick(cron, tz, latest)
    latest = max(latest, due_at)
    upcoming = next_tick(cron, tz, latest)
    if catch_up == "none" and now - latest > ON_TIME_WINDOW:
        return [], upcoming
    return _after([latest], last_tick), upcoming


def _after(ticks: list[datetime], last_tick: datetime | None) -> list[datetime]:
    return ticks if last_tick is None else [tick for tick in ticks if tick > last_tick]
