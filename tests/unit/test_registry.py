"""``@task`` options are checked when the handler is declared, so a bad app fails at import, not at run time."""

from __future__ import annotations

import re

import pytest

from pgsched.errors import InvalidInput
from pgsched.worker.registry import Registry


def handler(payload, ctx) -> None:
    return None


def test_a_task_records_its_options() -> None:
    registry = Registry()
    registry.task(
        "digest", max_attempts=5, timeout="30s", backoff=("10s", "5m"), cron=" 0  3 * * * ", cron_queue="reports"
    )(handler)
    spec = registry.tasks["digest"]
    assert (spec.max_attempts, spec.timeout_s, spec.backoff_base_s, spec.backoff_cap_s) == (5, 30.0, 10.0, 300.0)
    assert (spec.cron, spec.cron_queue) == ("0 3 * * *", "reports")
    assert not spec.is_async


def test_without_cron_queue_the_schedule_queue_is_left_to_the_worker() -> None:
    registry = Registry()
    registry.task("digest", cron="@daily")(handler)
    assert (registry.tasks["digest"].cron, registry.tasks["digest"].cron_queue) == ("@daily", None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "task digest: invalid cron expression '61 * * * *'"),
        ({"cron": "* * * * * *"}, "task digest: invalid cron expression '* * * * * *': use five fields"),
        ({"cron_queue": "reports"}, "task digest: cron_queue needs cron"),
        ({"cron": "@daily", "cron_queue": "bad queue"}, "task digest: invalid queue name 'bad queue'"),
        ({"backoff": ("1m", "10s")}, "task digest: backoff must be positive and at most its cap"),
        ({"max_attempts": 0}, "task digest: invalid max attempts 0"),
        ({"timeout": "soon"}, "task digest: "),
    ],
)
def test_bad_options_are_refused_at_declaration(options: dict, message: str) -> None:
    registry = Registry()
    with pytest.raises(InvalidInput, match="^" + re.escape(message)):
        registry.task("digest", **options)
    assert registry.tasks == {}


def test_a_name_cannot_take_a_second_handler() -> None:
    registry = Registry()
    registry.task("digest")(handler)
    registry.task("digest")(handler)  # the same function again (a module imported twice) is fine
    with pytest.raises(InvalidInput, match="registered twice"):
        registry.task("digest")(lambda payload, ctx: None)
