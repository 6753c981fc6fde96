"""Where a worker's claims start reading the ready index (docs/protocol.md, "Where a claim starts reading"):
the segments ReadyMarks builds from what its claims took, and when it makes a full pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgsched.repository import FULL_PASS, ReadyMarks

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def row(job_id: int, priority: int | None, run_at: datetime | None) -> tuple:
    """A claimed row as JobClaim returns it: id, task, payload, attempt, max_attempts, timeout, lease,
    trace_context, priority, run_at."""
    return (job_id, "t", {}, 1, 3, 300.0, job_id, None, priority, run_at)


def learned(*rows: tuple, now: float = 0.0) -> ReadyMarks:
    marks = ReadyMarks()
    marks.learn(list(rows), full=True, took_s=0.001, now=now)
    return marks


def test_a_new_worker_makes_a_full_pass() -> None:
    segments = ReadyMarks().segments(123.0)
    assert segments is FULL_PASS and segments.full
    assert segments.covers(1000, T0, 1) and segments.covers(-1000, T0, 1)


def test_a_known_level_is_read_from_the_first_job_the_last_claim_took_there() -> None:
    marks = learned(row(12, 0, T0 + timedelta(seconds=1)), row(11, 0, T0), row(13, 0, T0 + timedelta(seconds=2)))
    segments = marks.segments(0.01)
    assert not segments.full
    assert segments.covers(0, T0, 11)
    assert not segments.covers(0, T0, 10)  # the same run_at, an earlier id: taken by the same producer's insert
    assert segments.covers(0, T0 - timedelta(milliseconds=49), 1)  # within the margin
    assert not segments.covers(0, T0 - timedelta(milliseconds=51), 1)
    # Every other level is read from its beginning.
    assert segments.covers(1, T0 - timedelta(days=1), 1)
    assert segments.covers(-1, T0 - timedelta(days=1), 1)


def test_segments_follow_claim_order_and_cover_every_level_between_known_ones() -> None:
    marks = learned(row(1, 5, T0), row(2, 0, T0))
    segments = marks.segments(0.01)
    # Highest first: above 5, level 5 (margin, then on), 4..1, level 0 (margin, then on), below 0.
    assert segments.hi == [2**31 - 1, 5, 5, 4, 0, 0, -1]
    assert segments.lo == [6, 5, 5, 1, 0, 0, -(2**31)]
    for level in (1000, 6, 4, 3, 1, -1, -1000):
        assert segments.covers(level, T0 - timedelta(days=1), 1), level


def test_adjacent_levels_leave_no_empty_range_between_them() -> None:
    segments = learned(row(1, 1, T0), row(2, 0, T0)).segments(0.01)
    assert segments.hi == [2**31 - 1, 1, 1, 0, 0, -1]


def test_rows_of_the_limited_claim_teach_nothing() -> None:
    marks = learned(row(1, None, None))
    assert marks.segments(0.01) is FULL_PASS


def test_the_full_pass_period_follows_its_cost_within_bounds() -> None:
    marks = ReadyMarks()
    marks.learn([row(1, 0, T0)], full=True, took_s=0.01, now=100.0)  # 20 x 10 ms
    assert not marks.segments(100.19).full
    assert marks.segments(100.2).full
    marks.learn([], full=True, took_s=0.0, now=200.0)  # at least 50 ms
    assert not marks.segments(200.04).full
    assert marks.segments(200.05).full
    marks.learn([], full=True, took_s=10.0, now=300.0)  # at most 5 s
    assert not marks.segments(304.9).full
    assert marks.segments(305.0).full


def test_a_claim_that_is_not_a_full_pass_does_not_move_the_next_one() -> None:
    marks = ReadyMarks()
    marks.learn([row(1, 0, T0)], full=True, took_s=0.01, now=100.0)
    marks.learn([row(2, 0, T0)], full=False, took_s=5.0, now=100.1)
    assert marks.segments(100.2).full


def test_rewind_makes_the_next_claim_a_full_pass() -> None:
    marks = learned(row(1, 0, T0), now=100.0)
    assert not marks.segments(100.01).full
    marks.rewind()
    assert marks.segments(100.01).full


def test_the_least_recently_claimed_levels_are_forgotten_beyond_the_limit() -> None:
    marks = ReadyMarks()
    for level in range(ReadyMarks.MAX_LEVELS + 2):
        marks.learn([row(level, level, T0)], full=False, took_s=0.0, now=0.0)
    marks.learn([], full=True, took_s=1.0, now=0.0)
    segments = marks.segments(0.01)
    known = {hi for hi, lo in zip(segments.hi, segments.lo, strict=True) if hi == lo}
    assert known == set(range(2, ReadyMarks.MAX_LEVELS + 2))
    # A forgotten level is read from its beginning again.
    assert segments.covers(0, T0 - timedelta(days=1), 1)
