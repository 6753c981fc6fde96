"""Parsing of human durations (``30s``, ``5m``, ``1h30m``, ``7d``, plain seconds) and rates (``100/s``)."""

import math
import re
from datetime import timedelta

from pgsched.errors import InvalidInput

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")
# Far beyond any retention or delay anyone means, yet small enough for datetime.timedelta and PostgreSQL intervals.
MAX_DURATION_S = 100 * 366 * 86400.0
# The furthest a job may be put off: by a delay when added, or by a handler's Retry.
MAX_DELAY_S = 366 * 86400.0


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Return the number of seconds in ``text``; raise InvalidInput when it is not a duration."""
    value = text.strip().lower()
    if _PLAIN.fullmatch(value):
        seconds = float(value)
    elif value and _WHOLE.fullmatch(value):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(value))
    else:
        raise InvalidInput(f"invalid {what} {text!r}: use e.g. 30s, 5m, 2h, 7d, 1h30m or plain seconds")
    if not seconds <= MAX_DURATION_S:
        raise InvalidInput(f"invalid {what} {_clip(text)}: too long (at most 100 years)")
    return seconds


def to_seconds(value: float | timedelta | str, what: str = "duration") -> float:
    """Seconds from a number, a timedelta or a duration string; InvalidInput names ``what`` otherwise."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value, what=what)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"invalid {what} {value!r}")
    return float(value)


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def format_duration(seconds: float) -> str:
    """Render seconds compactly for people: ``90`` becomes ``1m30s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds % 1 else f"{seconds:.0f}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


def parse_rate(text: str) -> float:
    """Return events per second in ``text`` (``100/s``, ``5/m``, ``1000/h``, or a plain number per second)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*", text.lower())
    if not match or not 0 < float(match.group(1)) < math.inf:
        raise InvalidInput(f"invalid rate {text!r}: use e.g. 100/s, 30/m or 1000/h")
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}[match.group(2) or "s"]
    return float(match.group(1)) / per
