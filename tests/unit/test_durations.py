"""Parsing of human durations and rates."""

import pytest

from pgsched.durations import format_duration, parse_duration, parse_rate
from pgsched.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("45", 45.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (" 10s ", 10.0),
        ("10S", 10.0),
    ],
)
def test_parses_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "s", "10x", "-5", "-5s", "1h 30m", "1.h", "h1", "5m3", "1e3", "abc", "10ss"])
def test_rejects_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(text, what="delay")
    assert info.value.message == f"invalid delay {text!r}: use e.g. 30s, 5m, 2h, 7d, 1h30m or plain seconds"
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (5, "5s"), (1.5, "1.5s"), (90, "1m30s"), (93784, "1d2h3m4s")]
)
def test_formats_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("text", "rate"), [("100/s", 100.0), ("30/m", 0.5), ("3600/h", 1.0), ("7", 7.0)])
def test_parses_rates(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["0/s", "fast", "10/d", "-1/s", ""])
def test_rejects_bad_rates(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_rate(text)
