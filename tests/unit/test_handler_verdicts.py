"""What a handler may raise to decide its job's fate: ``Fail`` and ``Retry`` (their effect on jobs is in
tests/worker/test_handlers.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pgsched.errors import InvalidInput
from pgsched.worker import Fail, Retry


def test_retry_takes_seconds_a_timedelta_or_a_duration() -> None:
    assert Retry(after=2.5).after_s == 2.5
    assert Retry(after=timedelta(minutes=2)).after_s == 120.0
    assert Retry("busy", after="1h30m").after_s == 5400.0
    assert (Retry().after_s, str(Retry())) == (0.0, "retry requested")
    assert str(Fail()) == "failed by its handler"


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (-1, "Retry after -1: from 0 to a year"),
        (timedelta(days=400), "Retry after datetime.timedelta(days=400): from 0 to a year"),
        ("soon", "invalid duration 'soon'"),
    ],
)
def test_retry_refuses_a_delay_out_of_range(after, message: str) -> None:
    with pytest.raises(InvalidInput, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Retry(after=after)
