"""Property tests of duration and rate parsing: any text either parses to a sane number or is refused cleanly."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgsched.durations import MAX_DURATION_S, format_duration, parse_duration, parse_rate
from pgsched.errors import InvalidInput

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

# Text that looks like a duration often enough to reach every branch, plus anything at all.
duration_alphabet = st.sampled_from([*list("0123456789.smhdwSMHD -+e_/"), "ms", "٣", "\x00", "\u2028"])
duration_like = st.lists(duration_alphabet, max_size=12).map("".join)
any_text = st.one_of(duration_like, st.text(max_size=30), st.integers(min_value=0, max_value=10**400).map(str))


def _assert_clean_refusal(exc: InvalidInput, what: str) -> None:
    assert exc.exit_code == 2
    assert exc.message.startswith(f"invalid {what} ")
    assert "\n" not in exc.message and "\r" not in exc.message


@settings(max_examples=1000, deadline=None)
@given(any_text)
@example("9" * 400)
@example("1" * 20 + "w")
@example("99999999999999999999d")
def test_parse_duration_returns_a_usable_number_or_refuses(text: str) -> None:
    try:
        seconds = parse_duration(text, what="delay")
    except InvalidInput as exc:
        _assert_clean_refusal(exc, "delay")
        return
    assert math.isfinite(seconds)
    assert 0 <= seconds <= MAX_DURATION_S
    # Every accepted duration must be usable where sched uses it: as a timedelta and a PostgreSQL interval.
    timedelta(seconds=seconds)


parts = st.lists(
    st.tuples(st.integers(min_value=0, max_value=1000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=5
)


@settings(max_examples=300, deadline=None)
@given(parts, st.booleans())
def test_compound_durations_add_up(pieces: list[tuple[int, str]], upper: bool) -> None:
    text = "".join(f"{n}{unit}" for n, unit in pieces)
    expected = sum(n * UNITS[unit] for n, unit in pieces)
    assert parse_duration(text.upper() if upper else text) == pytest.approx(expected)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", " ", "\t"]))
def test_plain_seconds(seconds: int, pad: str) -> None:
    assert parse_duration(f"{pad}{seconds}{pad}") == float(seconds)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_formatted_durations_parse_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


rate_alphabet = st.sampled_from([*list("0123456789./ smhinecour-"), "sec", "min", "hour"])


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.lists(rate_alphabet, max_size=10).map("".join), st.text(max_size=20)))
@example("9" * 400)
@example("9" * 400 + "/h")
def test_parse_rate_returns_a_positive_finite_rate_or_refuses(text: str) -> None:
    try:
        rate = parse_rate(text)
    except InvalidInput as exc:
        _assert_clean_refusal(exc, "rate")
        return
    assert 0 < rate < math.inf


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "sec", "m", "min", "h", "hour"]))
def test_rates_divide_by_their_unit(count: int, unit: str) -> None:
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}[unit]
    assert parse_rate(f"{count}/{unit}") == pytest.approx(count / per)
