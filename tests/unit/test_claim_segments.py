"""Where a worker's claims start reading the ready index (docs/protocol.md, "Where a claim starts reading"):
the segments ReadyMarks builds from what its claims took, when it makes a full pass, and how the maintenance
probe moves a position back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgsched.repository import FULL_PASS, DueMarks, GroupProbe, ReadyMarks

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONG_AGO = T0 - timedelta(days=1)


def row(
    job_id: int, priority: int, run_at: datetime | None, group: str | None = None, marks_level: bool = True
) -> tuple:
    """A claimed row as JobClaim returns it: id, task, payload, attempt, max_attempts, timeout, lease,
    trace_context, priority, run_at, group, marks_level."""
    return (job_id, "t", {}, 1, 3, 300.0, job_id, None, priority, run_at, group, marks_level)


class Costly(ReadyMarks):
    """Positions as while vacuum is held back: reading from the beginning is never cheap."""

    CHEAP_PROBE_S = 0.0


def learned(*rows: tuple, now: float = 0.0) -> ReadyMarks:
    marks = Costly()
    marks.learn(list(rows), full=True, now=now)
    return marks


def test_a_new_worker_makes_a_full_pass() -> None:
    segments = ReadyMarks().segments(123.0)
    assert segments is FULL_PASS and segments.full
    assert segments.covers(1000, T0, 1) and segments.covers(-1000, T0, 1)


def test_a_known_level_is_read_from_the_last_job_the_last_claim_took_there() -> None:
    later = T0 + timedelta(seconds=2)
    marks = learned(row(12, 0, T0 + timedelta(seconds=1)), row(11, 0, T0), row(13, 0, later))
    segments = marks.segments(0.01)
    assert not segments.full
    assert segments.covers(0, later, 13)
    assert not segments.covers(0, later, 12)  # the same run_at, an earlier id: taken with the same producer's insert
    assert segments.covers(0, later - timedelta(milliseconds=49), 1)  # within the margin
    assert not segments.covers(0, later - timedelta(milliseconds=51), 1)
    # Every other level is read from its beginning.
    assert segments.covers(1, LONG_AGO, 1)
    assert segments.covers(-1, LONG_AGO, 1)


def test_segments_follow_claim_order_and_cover_every_level_between_known_ones() -> None:
    marks = learned(row(1, 5, T0), row(2, 0, T0))
    segments = marks.segments(0.01)
    # Highest first: above 5, level 5 (margin, then on), 4..1, level 0 (margin, then on), below 0.
    assert segments.hi == [2**31 - 1, 5, 5, 4, 0, 0, -1]
    assert segments.lo == [6, 5, 5, 1, 0, 0, -(2**31)]
    for level in (1000, 6, 4, 3, 1, -1, -1000):
        assert segments.covers(level, LONG_AGO, 1), level


def test_adjacent_levels_leave_no_empty_range_between_them() -> None:
    segments = learned(row(1, 1, T0), row(2, 0, T0)).segments(0.01)
    assert segments.hi == [2**31 - 1, 1, 1, 0, 0, -1]


def test_a_row_taken_out_of_claim_order_moves_no_level_but_its_group() -> None:
    marks = learned(row(1, 0, T0, "a", marks_level=False))
    segments = marks.segments(0.01)
    assert not segments.full
    assert segments.covers(0, LONG_AGO, 1)  # level 0 is still read from its beginning
    assert segments.covers_in_group("a", 0, T0, 1)
    assert not segments.covers_in_group("a", 0, T0, 0)  # the same run_at, an earlier id: taken with it
    assert segments.covers_in_group("a", 0, T0 - timedelta(milliseconds=49), 5)
    assert not segments.covers_in_group("a", 0, T0 - timedelta(milliseconds=51), 5)
    assert segments.covers_in_group("a", 5, LONG_AGO, 5)  # the group's other levels: from their beginning
    assert segments.covers_in_group("b", 0, LONG_AGO, 5)  # a group it does not know: from its beginning


def test_a_group_is_read_from_the_last_job_claimed_of_it_in_claim_order() -> None:
    later = T0 + timedelta(seconds=1)
    marks = learned(row(3, 0, later, "a"), row(1, 5, LONG_AGO, "a"), row(2, 0, T0, "a"))
    segments = marks.segments(0.01)
    assert segments.group == ["a"] and segments.group_priority == [0]
    assert segments.group_from == [later - ReadyMarks.MARGIN]
    assert (segments.group_run_at, segments.group_id) == ([later], [3])
    marks.learn([row(4, 0, None, "a")], full=False, now=0.0)  # before year 1000: from its beginning
    assert marks.segments(0.01).group == []


def test_the_least_recently_claimed_groups_are_forgotten_beyond_the_limit() -> None:
    marks = Costly()
    for number in range(ReadyMarks.MAX_GROUPS + 2):
        marks.learn([row(number, 0, T0, f"g{number}")], full=False, now=0.0)
    marks.learn([row(0, 0, T0, "g0")], full=True, now=0.0)  # claimed again: the most recent
    known = marks.segments(0.01).group
    assert len(known) == ReadyMarks.MAX_GROUPS
    assert "g1" not in known and "g2" not in known and known[-1] == "g0"


def test_the_probe_moves_a_group_back_to_a_job_before_its_position_while_the_front_is_costly() -> None:
    marks = learned(row(10, 0, T0, "a", marks_level=False), row(11, 0, T0, "b", marks_level=False))
    assert marks.probe_levels(0.0) == [0]
    marks.probed([], took_s=0.001, now=1.0)
    # Level 0 has no position (the rows were not taken in claim order): each group from its level's beginning.
    assert marks.probe_groups() == [GroupProbe("a", 0, None, T0, 10), GroupProbe("b", 0, None, T0, 11)]
    moved = marks.probed_groups(
        [("a", 0, LONG_AGO, 4), ("b", 0, T0 - timedelta(milliseconds=40), 9), ("c", 0, LONG_AGO, 1)],
        took_s=0.1,
        now=1.0,
    )
    assert moved == 1  # b's first job is within the margin; c is not known
    segments = marks.segments(1.01)
    assert segments.covers_in_group("a", 0, LONG_AGO, 4) and not segments.covers_in_group("b", 0, LONG_AGO, 4)
    # 20 x (0.001 + 0.1 s) after the groups' part: the probe's share counts both parts.
    assert marks.probe_levels(3.01) is None and marks.probe_levels(3.02) == [0]
    cheap = ReadyMarks()
    cheap.learn([row(1, 0, T0, "a")], full=True, now=0.0)
    assert cheap.probe_groups() == []  # while cheap, claims read every group from its beginning


def test_the_probe_of_a_group_starts_where_claims_read_its_level() -> None:
    later = T0 + timedelta(seconds=1)
    marks = learned(row(1, 0, T0, "a"), row(2, 0, later, "b", marks_level=False))
    marks.probed([], took_s=0.001, now=1.0)
    # Level 0 is read from job 1 (less the margin): a's position is there, so a has nothing to probe; b's range
    # runs from there to its position.
    assert marks.probe_groups() == [GroupProbe("b", 0, T0 - ReadyMarks.MARGIN, later, 2)]


def test_rewind_reads_every_group_from_its_beginning() -> None:
    marks = learned(row(1, 0, T0, "a"), now=100.0)
    marks.rewind()
    assert marks.segments(100.01).full
    marks.learn([row(2, 0, T0)], full=True, now=100.01)
    assert marks.segments(100.02).group == []


def test_a_full_pass_comes_at_least_every_full_pass_period() -> None:
    every = ReadyMarks.FULL_PASS_EVERY_S
    marks = learned(row(1, 0, T0), now=100.0)
    assert not marks.segments(100.0 + every - 0.01).full
    assert marks.segments(100.0 + every).full
    marks.learn([row(2, 0, T0)], full=False, now=100.0 + every)  # a claim from positions does not move it
    assert marks.segments(100.0 + every).full


def test_rewind_makes_the_next_claim_a_full_pass() -> None:
    marks = learned(row(1, 0, T0), now=100.0)
    assert not marks.segments(100.01).full
    marks.rewind()
    assert marks.segments(100.01).full


def test_the_least_recently_claimed_levels_are_forgotten_beyond_the_limit() -> None:
    marks = Costly()
    for level in range(ReadyMarks.MAX_LEVELS + 2):
        marks.learn([row(level, level, T0)], full=False, now=0.0)
    marks.learn([], full=True, now=0.0)
    segments = marks.segments(0.01)
    known = {hi for hi, lo in zip(segments.hi, segments.lo, strict=True) if hi == lo}
    assert known == set(range(2, ReadyMarks.MAX_LEVELS + 2))
    assert segments.covers(0, LONG_AGO, 1)  # a forgotten level is read from its beginning again


def test_the_probe_moves_a_level_back_to_a_job_before_its_position() -> None:
    marks = learned(row(10, 0, T0), row(20, 3, T0))
    assert marks.probe_levels(0.0) == [3, 0]
    moved = marks.probed([(0, LONG_AGO, 4), (3, T0, 20)], took_s=0.001, now=1.0)
    assert moved == 1  # level 3's first ready job is where claims read already
    segments = marks.segments(1.01)
    assert segments.covers(0, LONG_AGO, 4) and not segments.covers(0, LONG_AGO, 3)
    # Jobs the claims read already move nothing: within the margin, or at the position itself.
    assert not marks.lower(3, T0 - timedelta(milliseconds=40), 1)
    assert not marks.lower(3, T0, 20)
    assert marks.lower(3, T0, 19)  # the same run_at, an earlier id: before the position
    assert not marks.lower(7, LONG_AGO, 1)  # a level claims read from its beginning


def test_the_probe_period_follows_its_cost_within_bounds() -> None:
    marks = learned(row(1, 0, T0))
    marks.probed([], took_s=0.05, now=100.0)  # 20 x 50 ms
    assert marks.probe_levels(100.99) is None
    assert marks.probe_levels(101.0) == [0]
    marks.probed([], took_s=0.0, now=200.0)
    assert marks.probe_levels(200.24) is None
    assert marks.probe_levels(200.25) == [0]
    marks.probed([], took_s=10.0, now=300.0)
    assert marks.probe_levels(304.99) is None
    assert marks.probe_levels(305.0) == [0]
    assert ReadyMarks().probe_levels(0.0) == [0]  # before the first claim: the default level


def test_while_reading_from_the_beginning_is_cheap_every_claim_is_a_full_pass() -> None:
    marks = ReadyMarks()
    marks.learn([row(1, 0, T0)], full=True, now=0.0)
    assert marks.segments(0.01).full  # no probe has measured anything yet
    marks.probed([], took_s=ReadyMarks.CHEAP_PROBE_S, now=1.0)  # the walk from the front costs: positions
    assert not marks.segments(1.01).full
    marks.probed([], took_s=ReadyMarks.CHEAP_PROBE_S / 2, now=2.0)  # cheap again (vacuum caught up)
    assert marks.segments(2.01).full


def test_a_level_the_probe_finds_empty_is_read_from_the_probe_on_while_the_front_costs() -> None:
    # A worker that never claimed (its queue idle) reads everything from the beginning in every claim; its probe
    # looks at the default level, and finding it empty while the walk costs, reads it from the probe's start on.
    marks = ReadyMarks()
    marks.learn([], full=True, now=0.0)
    assert marks.probe_levels(0.0) == [0]
    marks.probed([], took_s=ReadyMarks.CHEAP_PROBE_S / 2, now=1.0, levels=[0], at=T0)  # cheap: nothing changes
    assert marks.segments(1.01).full
    marks.probed([], took_s=0.5, now=2.0, levels=[0], at=T0)
    segments = marks.segments(2.01)
    assert not segments.full
    assert segments.covers(0, T0 - timedelta(milliseconds=40), 1) and segments.covers(0, T0 + timedelta(hours=1), 1)
    assert not segments.covers(0, T0 - timedelta(milliseconds=60), 1)  # a late job: the next probe's to find
    assert segments.covers(3, LONG_AGO, 1) and segments.covers(-3, LONG_AGO, 1)  # other levels: from the start
    # A later empty probe moves the level on; a position past the probe's start stays where it is.
    marks.probed([], took_s=0.5, now=30.0, levels=[0], at=T0 + timedelta(seconds=5))
    assert not marks.segments(30.01).covers(0, T0 + timedelta(seconds=4), 1)
    marks.learn([row(9, 0, T0 + timedelta(seconds=9))], full=False, now=31.0)
    marks.probed([], took_s=0.5, now=60.0, levels=[0], at=T0 + timedelta(seconds=6))
    assert not marks.segments(60.01).covers(0, T0 + timedelta(seconds=8), 1)
    # A level with a ready job before its position moves back to it, as always.
    assert marks.probed([(0, T0, 3)], took_s=0.5, now=90.0, at=T0 + timedelta(seconds=10)) == 1
    assert marks.segments(90.01).covers(0, T0, 3)


def test_a_job_due_before_year_1000_leaves_its_level_without_a_position() -> None:
    marks = learned(row(1, 0, T0), row(2, 5, T0))
    marks.learn([row(3, 0, None)], full=False, now=0.0)
    segments = marks.segments(0.01)
    assert segments.covers(0, LONG_AGO, 1) and not segments.covers(5, LONG_AGO, 1)
    assert marks.probed([(5, None, 9)], took_s=0.0, now=1.0) == 1
    assert marks.segments(1.01).full  # no level left with a position


# --- where a promotion of due deferred jobs starts reading -------------------------------------------------------


def test_a_cheap_full_pass_is_followed_by_another_full_pass() -> None:
    marks = DueMarks()
    assert marks.positions(0.0) is None  # the first pass is a full one
    marks.learn([("q", 0, None)], limit=10, at=T0, server_s=DueMarks.CHEAP_S / 2, full=True, now=0.0)
    assert marks.positions(0.0) is None


def test_a_costly_full_pass_is_repeated_at_twenty_times_its_cost() -> None:
    marks = DueMarks()
    marks.learn(
        [("q", 0, None), ("r", 10, T0)], limit=10, at=T0 + timedelta(seconds=1), server_s=0.2, full=True, now=100.0
    )
    # q promoted all it saw: from the statement's now(); r hit the limit: from its last row. Both less the margin.
    assert marks.positions(103.9) == {"q": T0 + timedelta(seconds=1) - DueMarks.MARGIN, "r": T0 - DueMarks.MARGIN}
    assert marks.positions(104.0) is None  # 20 x 0.2 s
    marks.learn([], limit=10, at=T0, server_s=10.0, full=True, now=200.0)
    assert marks.positions(229.9) is not None and marks.positions(230.0) is None  # at most every 30 s


def test_a_pass_from_positions_moves_them_but_not_the_next_full_pass() -> None:
    marks = DueMarks()
    marks.learn([("q", 0, None)], limit=10, at=T0, server_s=1.0, full=True, now=0.0)
    marks.learn([("q", 3, T0)], limit=10, at=T0 + timedelta(seconds=5), server_s=0.0, full=False, now=1.0)
    assert marks.positions(19.9) == {"q": T0 + timedelta(seconds=5) - DueMarks.MARGIN}
    assert marks.positions(20.0) is None
