"""The outcome rules: how a run's end (its result or exception, a cancel request, a timeout or shutdown)
becomes the outcome a worker stores, and what makes a result or an error storable. No database needed."""

from __future__ import annotations

import pytest

from pgsched.models import ClaimedJob, OutcomeKind
from pgsched.worker import Fail, Retry, TaskSpec
from pgsched.worker.outcomes import (
    MAX_ERROR_CHARS,
    RunEnd,
    StopReason,
    UnstorableResult,
    encode_result,
    outcome_of,
    storable_text,
)

SPEC = TaskSpec("t", lambda payload, ctx: None, is_async=False, backoff_base_s=5.0, backoff_cap_s=60.0)
LIMIT = 1000


def end(**fields) -> RunEnd:
    job = ClaimedJob(7, "t", {}, 2, 3, 1.5, "default", lease=42)
    return RunEnd(job, SPEC, **fields)


def test_a_result_is_stored_as_json_text_under_the_runs_lease() -> None:
    outcome = outcome_of(end(result={"n": 1, "s": "h\u00e9"}), LIMIT)
    assert (outcome.job_id, outcome.lease, outcome.kind) == (7, 42, OutcomeKind.SUCCEEDED)
    assert outcome.result == '{"n":1,"s":"h\u00e9"}'
    assert outcome_of(end(), LIMIT).result is None


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({1, 2}, "the handler returned a value that is not JSON (set): "),
        ({"x": float("nan")}, "the handler returned a value that is not JSON (dict): "),
        ({"x": "a\x00b"}, "the handler's result contains a NUL character (\\u0000), which cannot be stored"),
        ({"x": "\udc80"}, "the handler's result is not valid Unicode (it holds a lone surrogate such as \\udc80)"),
        (
            "x" * LIMIT,
            f"the handler's result is {LIMIT + 2} bytes, over the limit of {LIMIT} (SCHED_MAX_PAYLOAD_BYTES)",
        ),
    ],
)
def test_an_unstorable_result_fails_the_job_for_good_saying_why(result, error: str) -> None:
    outcome = outcome_of(end(result=result), LIMIT)
    assert (outcome.kind, outcome.retryable, outcome.result) == (OutcomeKind.FAILED, False, None)
    assert outcome.error.startswith(error)


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    assert encode_result({"x": "\\u0000"}, LIMIT) == '{"x":"\\\\u0000"}'
    with pytest.raises(UnstorableResult):
        encode_result({"x": "\\\x00"}, LIMIT)


def test_an_exception_fails_the_attempt_with_its_traceback_and_the_tasks_backoff() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        outcome = outcome_of(end(error=exc), LIMIT)
    assert (outcome.kind, outcome.retryable, outcome.retry_after_s) == (OutcomeKind.FAILED, True, None)
    assert outcome.error.startswith("ValueError: boom\nTraceback")
    assert (outcome.backoff_base_s, outcome.backoff_cap_s) == (5.0, 60.0)


def test_fail_and_retry_are_the_handlers_verdict_without_a_traceback() -> None:
    failed = outcome_of(end(error=Fail("card refused")), LIMIT)
    assert (failed.error, failed.retryable) == ("Fail: card refused", False)
    retried = outcome_of(end(error=Retry("busy", after=30)), LIMIT)
    assert (retried.error, retried.retryable, retried.retry_after_s) == ("Retry: busy", True, 30.0)


def test_error_text_is_made_storable() -> None:
    outcome = outcome_of(end(error=ValueError("nul\x00 and \udc80")), LIMIT)
    assert outcome.error.startswith("ValueError: nul\\x00 and \\udc80\n")
    outcome.error.encode()  # storable: valid Unicode
    assert len(storable_text("x" * 10_000)) == MAX_ERROR_CHARS


def test_a_timeout_fails_the_attempt_with_the_tasks_backoff() -> None:
    outcome = outcome_of(end(stopped=StopReason.TIMEOUT), LIMIT)
    assert (outcome.kind, outcome.error, outcome.retryable) == (OutcomeKind.FAILED, "timed out after 1.5s", True)
    assert (outcome.backoff_base_s, outcome.backoff_cap_s) == (5.0, 60.0)


def test_shutdown_releases_without_spending_an_attempt() -> None:
    assert outcome_of(end(stopped=StopReason.SHUTDOWN), LIMIT).kind is OutcomeKind.RELEASED
    assert outcome_of(end(stopped=StopReason.SHUTDOWN, error=RuntimeError("stopped")), LIMIT).kind is (
        OutcomeKind.RELEASED
    )


@pytest.mark.parametrize(
    "how",
    [
        {},
        {"result": {"done": True}},
        {"error": RuntimeError("saw the cancel request")},
        {"stopped": StopReason.CANCEL},
        {"stopped": StopReason.TIMEOUT},
        {"stopped": StopReason.SHUTDOWN},
    ],
)
def test_once_a_cancel_was_requested_the_run_ends_cancelled_whatever_happened_next(how: dict) -> None:
    outcome = outcome_of(end(cancel_requested=True, **how), LIMIT)
    assert (outcome.kind, outcome.error) == (OutcomeKind.CANCELLED, "cancelled on request")
