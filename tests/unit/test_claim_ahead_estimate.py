"""How many jobs a worker claims beyond its free slots, from its finishing rate and claim round trip."""

from __future__ import annotations

from pgsched.worker.fetcher import ClaimAhead


def run_steadily(ahead: ClaimAhead, per_second: float, seconds: float, start: float = 0.0, step: float = 0.01) -> int:
    """Finish jobs at ``per_second`` for ``seconds`` of made-up time, asking ``extra`` at every step."""
    now, extra = start, 0
    for _ in range(round(seconds / step)):
        now += step
        ahead.finished += round(per_second * step)
        extra = ahead.extra(now)
    return extra


def test_nothing_ahead_before_any_job_finished() -> None:
    ahead = ClaimAhead(limit=50)
    ahead.claim_took(0.001)
    assert ahead.extra(0.0) == 0
    assert ahead.extra(5.0) == 0


def test_short_jobs_are_claimed_a_few_round_trips_ahead() -> None:
    ahead = ClaimAhead(limit=50)
    for _ in range(50):
        ahead.claim_took(0.0015)
    # 2,500 jobs/s and 1.5 ms per claim: four round trips hold 15 jobs (the smoothed rate approaches it).
    assert run_steadily(ahead, 2500, seconds=3) in (14, 15)


def test_long_jobs_are_never_claimed_ahead() -> None:
    ahead = ClaimAhead(limit=50)
    for _ in range(50):
        ahead.claim_took(0.002)
    # Fifty slots of one-second jobs finish 50 a second: 0.4 of a job per four round trips rounds down to none.
    assert run_steadily(ahead, 50, seconds=10) == 0


def test_a_quiet_spell_ends_claiming_ahead() -> None:
    ahead = ClaimAhead(limit=500)
    for _ in range(50):
        ahead.claim_took(0.002)
    assert run_steadily(ahead, 5000, seconds=3) in (39, 40)
    # Then the slots fill with long jobs and nothing finishes for two seconds.
    assert ahead.extra(5.0) == 0


def test_never_more_than_the_limit() -> None:
    ahead = ClaimAhead(limit=8)
    for _ in range(50):
        ahead.claim_took(0.01)
    assert run_steadily(ahead, 50_000, seconds=3) == 8
