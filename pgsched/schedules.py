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
    """The first tick of ``cron`` in zone ``tz`` strictly after ``after``, in UTC."""
    local = after.astimezone(ZoneInfo(tz))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def due_ticks(cron: str, tz: str, catch_up: str, due_at: datetime, now: datetime) -> tuple[list[datetime], datetime]:
    """The ticks to enqueue for a schedule whose next tick ``due_at`` has come, and its next run afterwards.

    "latest" runs only the newest missed tick (one catch-up job, not a flood); "none" runs the newest tick only
    if it is less than ON_TIME_WINDOW late; "all" runs every missed tick, at most MAX_TICKS_PER_FIRE per pass
    (the returned next run is then still due, and the next pass goes on from there)."""
    if catch_up == "all":
        ticks = [due_at]
        upcoming = next_tick(cron, tz, due_at)
        while upcoming <= now and len(ticks) < MAX_TICKS_PER_FIRE:
            ticks.append(upcoming)
            upcoming = next_tick(cron, tz, upcoming)
        return ticks, upcoming
    # Step back from now rather than forward from due_at: a schedule idle for a year must not walk every tick.
    latest = croniter(cron, now.astimezone(ZoneInfo(tz))).get_prev(datetime).astimezone(UTC)
    if next_tick(cron, tz, latest) <= now:
        latest = next_tick(cron, tz, latest)
    latest = max(latest, due_at)
    upcoming = next_tick(cron, tz, latest)
    if catch_up == "none" and now - latest > ON_TIME_WINDOW:
        return [], upcoming
    return [latest], upcoming
