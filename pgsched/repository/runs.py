"""The worker's side of the protocol: claims under a lease, outcomes fenced by it, progress, the reaper, and
due-job promotion (docs/protocol.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pgsched.db import AsyncConnection
from pgsched.models import ClaimedJob, JobState, Outcome, OutcomeKind
from pgsched.sqlfiles import query


async def plan_claims_by_index(conn: AsyncConnection) -> None:
    """On a claimer's session (not behind a transaction pooler): the plans the server keeps for its prepared
    claim read by the indexes, never the whole table (SessionClaimerPlans says why)."""
    await conn.rows(query("SessionClaimerPlans"))


async def set_commit_durability(conn: AsyncConnection, level: str) -> None:
    """Set this session's synchronous_commit: off, local, remote_write or on (see SCHED_WORKER_COMMIT)."""
    await conn.rows(query("SessionSetSynchronousCommit"), {"level": level})


# The lowest and highest priorities a segment can name (the column is an integer; the domain allows -1000..1000),
# and the earliest and latest run_at.
_LOWEST, _HIGHEST = -(2**31), 2**31 - 1
# The priority of a job added without one.
DEFAULT_LEVEL = 0
_BEGINNING, _END = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(slots=True)
class Segments:
    """JobClaim's segments of the ready index, in claim order, as parallel lists: each covers the priority levels
    hi..lo, from (run_at, id) on and before run_at ``until``. And, for the limited claim's turns between groups,
    where each known group is read: its level ``group_priority`` as a level is read from a position (from
    ``group_from`` up to ``group_run_at``, then from (``group_run_at``, ``group_id``) on), its other levels from
    their beginning (every group a claim does not name is read from its beginning)."""

    hi: list[int] = field(default_factory=list)
    lo: list[int] = field(default_factory=list)
    run_at: list[datetime] = field(default_factory=list)
    id: list[int] = field(default_factory=list)
    until: list[datetime] = field(default_factory=list)
    full: bool = False
    group: list[str] = field(default_factory=list)
    group_priority: list[int] = field(default_factory=list)
    group_from: list[datetime] = field(default_factory=list)
    group_run_at: list[datetime] = field(default_factory=list)
    group_id: list[int] = field(default_factory=list)

    def add(self, hi: int, lo: int, run_at: datetime = _BEGINNING, id: int = 0, until: datetime = _END) -> None:
        self.hi.append(hi)
        self.lo.append(lo)
        self.run_at.append(run_at)
        self.id.append(id)
        self.until.append(until)

    def add_group(self, group: str, priority: int, from_run_at: datetime, run_at: datetime, id: int) -> None:
        self.group.append(group)
        self.group_priority.append(priority)
        self.group_from.append(from_run_at)
        self.group_run_at.append(run_at)
        self.group_id.append(id)

    def covers(self, priority: int, run_at: datetime, id: int) -> bool:
        """Whether a claim with these segments reads the ready job at that position."""
        return any(
            lo <= priority <= hi and (run_at, id) >= (from_run_at, from_id) and run_at < until
            for hi, lo, from_run_at, from_id, until in zip(
                self.hi, self.lo, self.run_at, self.id, self.until, strict=True
            )
        )

    def covers_in_group(self, group: str, priority: int, run_at: datetime, id: int) -> bool:
        """Whether the turn of ``group`` reads its ready job at that position (a group not named: from its
        beginning)."""
        for name, level, from_run_at, at, at_id in zip(
            self.group, self.group_priority, self.group_from, self.group_run_at, self.group_id, strict=True
        ):
            if name == group:
                return priority != level or from_run_at <= run_at < at or (run_at, id) >= (at, at_id)
        return True

    def params(self) -> dict[str, Any]:
        return {key: getattr(self, name) for key, name, _ in _SEGMENT_PARAMS}

    def literals(self) -> dict[str, Any]:
        """``params()`` with every list as a PostgreSQL array literal, which the statement casts: the driver's
        dumping of lists element by element cost a claim from positions 7 ms for 100 known groups (its client
        time, more than the server's), and grows with the groups."""
        return {key: literal(getattr(self, name)) for key, name, literal in _SEGMENT_PARAMS}


def _int_array(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _time_array(values: list[datetime]) -> str:
    # ISO 8601 with its offset: no character an array literal would need quoted.
    return "{" + ",".join(value.isoformat() for value in values) + "}"


def _text_array(values: list[str]) -> str:
    # Every element quoted (so that a name such as NULL stays a name), backslashes and quotes escaped.
    return "{" + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"


def _as_is(value: bool) -> bool:
    return value


# JobClaim's parameter, the Segments field that holds it, and how literals() writes it.
_SEGMENT_PARAMS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("seg_hi", "hi", _int_array),
    ("seg_lo", "lo", _int_array),
    ("seg_run_at", "run_at", _time_array),
    ("seg_id", "id", _int_array),
    ("seg_until", "until", _time_array),
    ("seg_full", "full", _as_is),
    ("grp_name", "group", _text_array),
    ("grp_priority", "group_priority", _int_array),
    ("grp_from", "group_from", _time_array),
    ("grp_run_at", "group_run_at", _time_array),
    ("grp_id", "group_id", _int_array),
)


def _full_pass() -> Segments:
    segments = Segments(full=True)
    segments.add(_HIGHEST, _LOWEST)
    return segments


# The segments of a claim that reads the whole ready index from its beginning.
FULL_PASS = _full_pass()


class GroupProbe(NamedTuple):
    """Where the probe looks for a group's jobs before where claims read it: at its level ``priority``, from
    ``from_run_at`` (the level's beginning when None) up to its position (``run_at``, ``id``)."""

    group: str
    priority: int
    from_run_at: datetime | None
    run_at: datetime
    id: int


class ReadyMarks:
    """Where one worker's claims of one queue start reading the ready index (docs/protocol.md, "Where a claim
    starts reading").

    A claimed job leaves a dead entry in the ready index, which a scan must step over and check in the table
    until vacuum removes it; while a long transaction holds vacuum back nothing removes it, and a claim that
    reads each priority level from its beginning walks every job claimed since. A claim takes each level's
    jobs in (run_at, id) order, so every entry it passed before the last job it took there is of a job already
    claimed or being claimed: the next claim reads that level from that job on, and the jobs of the MARGIN before
    it (a producer's transaction that began earlier and committed later). Levels never claimed from are read
    from their beginning, and so is everything in a full pass: a worker's first claim, the claim after rewind(),
    and one every FULL_PASS_EVERY_S seconds (a backstop: the probe below finds such jobs).

    A queue with flow control is claimed by sched_claim_limited, whose turns between groups take jobs out of
    claim order: a level moves only to a job before which the claim took every job it read there (the row says
    so), and each group is read, in its turn, from the last job the worker claimed of it, as a level is (that
    job's level from the MARGIN before it; the group's other levels from their beginning). The worker knows the
    MAX_GROUPS groups it claimed from last; the others are read from their beginning.

    A job can still sit further back: one whose producer's transaction committed long after it began (its run_at
    is that transaction's start), one given back by a stopping or dead worker, a due job promoted into the ready
    index. The worker's maintenance looks for such jobs with a read-only probe of each known level from its
    beginning (``probe_levels``, ``lower``), and, while that is costly, of each known group between where claims
    read its level and its position (``probe_groups``): what lies before where claims read a level is the level
    probe's to find. It runs on its own connection so that claims never wait for it, at a period that follows
    the probe's cost (PROBE_COST_SHARE times the server's time for it, between PROBE_MIN_S and PROBE_MAX_S).

    While reading from the beginning is cheap (the last probe of the levels cost the server under CHEAP_PROBE_S,
    the round trip not counted: vacuum is keeping up), every claim is a full pass, as if there were no positions:
    such a job then waits for nothing."""

    MARGIN = timedelta(milliseconds=50)
    MAX_LEVELS = 16
    MAX_GROUPS = 2000
    FULL_PASS_EVERY_S = 600.0
    PROBE_MIN_S = 0.25
    PROBE_MAX_S = 5.0
    PROBE_COST_SHARE = 20
    CHEAP_PROBE_S = 0.003

    __slots__ = ("_cheap", "_groups", "_levels", "_levels_probe_s", "_next_full", "_next_probe")

    def __init__(self) -> None:
        # priority -> (run_at, id) of the last job the last claim at that level took, most recent last.
        self._levels: dict[int, tuple[datetime, int]] = {}
        # group -> (priority, run_at, id) of the last job claimed of it, most recently claimed last.
        self._groups: dict[str, tuple[int, datetime, int]] = {}
        self._next_full = 0.0
        self._next_probe = 0.0
        # The server's time for the levels' part of the last probe (the groups' part adds its own to it).
        self._levels_probe_s = 0.0
        # Until a probe finds reading from the beginning costly (CHEAP_PROBE_S = 0: never cheap).
        self._cheap = self.CHEAP_PROBE_S > 0

    def segments(self, now: float) -> Segments:
        """The segments of a claim made at ``now`` (monotonic seconds): the full pass when it is due or cheap."""
        if self._cheap or now >= self._next_full or not (self._levels or self._groups):
            return FULL_PASS
        segments = Segments()
        above = _HIGHEST
        for level in sorted(self._levels, reverse=True):
            if above > level:  # the levels between the previous one and this, from their beginning
                segments.add(above, level + 1)
            self._level_segments(level, *self._levels[level], into=segments)
            above = level - 1
        if above >= _LOWEST:
            segments.add(above, _LOWEST)
        for group, position in self._groups.items():
            self._group_segments(group, *position, into=segments)
        return segments

    def rewind(self) -> None:
        """Make the next claim a full pass (after this worker gave jobs back: they sit before its positions), and
        read every group from its beginning until claimed from again."""
        self._next_full = 0.0
        self._groups.clear()

    def learn(self, rows: Sequence[Sequence[Any]], *, full: bool, now: float) -> None:
        """Move each level's position to the last job this claim took there in claim order, and each group's to
        the last job taken of it; after a full pass, set the next."""
        last: dict[int, tuple[datetime, int] | None] = {}
        in_group: dict[str, tuple[int, datetime | None, int]] = {}
        for row in rows:
            level, run_at, group, marks_level = row[8], row[9], row[10], row[11]
            if marks_level:
                if run_at is None:  # before year 1000: the level is read from its beginning
                    last[level] = None
                elif level not in last or ((known := last[level]) is not None and (run_at, row[0]) > known):
                    last[level] = (run_at, row[0])
            if group is not None and (
                group not in in_group or _claim_order(level, run_at, row[0]) > _claim_order(*in_group[group])
            ):
                in_group[group] = (level, run_at, row[0])
        levels = self._levels
        for level, position in last.items():
            levels.pop(level, None)
            if position is not None:
                levels[level] = position
        while len(levels) > self.MAX_LEVELS:
            del levels[next(iter(levels))]
        groups = self._groups
        for group, (level, run_at, id) in in_group.items():
            groups.pop(group, None)
            if run_at is not None:  # before year 1000: the group is read from its beginning
                groups[group] = (level, run_at, id)
        while len(groups) > self.MAX_GROUPS:
            del groups[next(iter(groups))]
        if full:
            self._next_full = now + self.FULL_PASS_EVERY_S

    def probe_levels(self, now: float) -> list[int] | None:
        """The levels the maintenance probe should look at now (those with a position, and those where a known
        group is read from its position), or None when no probe is due. A worker that knows none (it has not
        claimed yet, or its queue is idle) probes the default level, so that while reading from the beginning
        costs, an empty default level gets a position (``probed``) and its claims stop being full passes."""
        if now < self._next_probe:
            return None
        levels = self._levels.keys() | {level for level, _, _ in self._groups.values()}
        return sorted(levels or {DEFAULT_LEVEL}, reverse=True)

    def probed(
        self,
        firsts: Sequence[tuple[int, datetime | None, int]],
        *,
        took_s: float,
        now: float,
        levels: Sequence[int] = (),
        at: datetime | None = None,
    ) -> int:
        """Take the probe's first ready job of each level: a level whose first job lies before where claims
        read it is read from that job next time. Returns how many levels moved back; sets the next probe.

        Of ``levels`` (those the probe asked about, as of ``at``: its statement's start), the ones without a
        first job are empty: while reading from the beginning costs, each is read from ``at`` on next time (less
        the MARGIN, as from a position), unless claims read it from later already. A job that goes back before
        that is the next probe's to find, as before any position."""
        self._next_probe = now + min(max(took_s * self.PROBE_COST_SHARE, self.PROBE_MIN_S), self.PROBE_MAX_S)
        self._levels_probe_s = took_s
        self._cheap = took_s < self.CHEAP_PROBE_S
        if at is not None and not self._cheap:
            found = {level for level, _, _ in firsts}
            for level in (level for level in levels if level not in found):
                mark = self._levels.get(level)
                if mark is None or mark < (at, 0):
                    self._levels.pop(level, None)
                    self._levels[level] = (at, 0)
            while len(self._levels) > self.MAX_LEVELS:
                del self._levels[next(iter(self._levels))]
        moved = 0
        for level, run_at, id in firsts:
            if run_at is None:  # before year 1000: read the level from its beginning
                moved += self._levels.pop(level, None) is not None
            elif self.lower(level, run_at, id):
                moved += 1
        return moved

    def probe_groups(self) -> list[GroupProbe]:
        """Where the probe should look for jobs before where claims read each known group, after the levels:
        while reading from the beginning costs (while it is cheap, claims are full passes and read every group
        from its beginning), at the group's level from where claims read that level (the probe of the level finds
        what lies before) up to the group's position; nothing for a group whose level is read from past it."""
        if self._cheap:
            return []
        probes = []
        for group, (level, run_at, id) in self._groups.items():
            mark = self._levels.get(level)
            if mark is None:  # the level is read from its beginning
                probes.append(GroupProbe(group, level, None, run_at, id))
            elif mark < (run_at, id):  # else claims read the level from the group's position or past it
                probes.append(GroupProbe(group, level, mark[0] - self.MARGIN, run_at, id))
        return probes

    def probed_groups(
        self, firsts: Sequence[tuple[str, int, datetime | None, int]], *, took_s: float, now: float
    ) -> int:
        """Take the probe's first ready job of each known group: a group whose first job lies before where its
        turn reads it is read from that job next time. Returns how many groups moved back; the next probe waits at
        least PROBE_COST_SHARE times the whole probe's cost, both parts (at most PROBE_MAX_S)."""
        whole = self._levels_probe_s + took_s
        self._next_probe = max(self._next_probe, now + min(whole * self.PROBE_COST_SHARE, self.PROBE_MAX_S))
        moved = 0
        for group, level, run_at, id in firsts:
            known = self._groups.get(group)
            if known is None:
                continue
            if run_at is None:  # before year 1000: read the group from its beginning
                del self._groups[group]
                moved += 1
            elif not self._group_segments(group, *known).covers_in_group(group, level, run_at, id):
                self._groups[group] = (level, run_at, id)
                moved += 1
        return moved

    def lower(self, level: int, run_at: datetime, id: int) -> bool:
        """Read ``level`` from the job at (run_at, id) on if it lies before where claims read it now."""
        mark = self._levels.get(level)
        if mark is None or self._level_segments(level, *mark).covers(level, run_at, id):
            return False  # read from its beginning, or claims read it already
        self._levels[level] = (run_at, id)
        return True

    def _group_segments(
        self, group: str, level: int, run_at: datetime, id: int, into: Segments | None = None
    ) -> Segments:
        """Where a claim reads ``group`` from the position (level, run_at, id): that level as from a level's
        position (``_level_segments``), the group's other levels from their beginning."""
        segments = into if into is not None else Segments()
        segments.add_group(group, level, run_at - self.MARGIN, run_at, id)
        return segments

    def _level_segments(self, level: int, run_at: datetime, id: int, into: Segments | None = None) -> Segments:
        """The two segments a claim reads ``level`` with from the position (run_at, id): the MARGIN before it,
        then from it on."""
        segments = into if into is not None else Segments()
        segments.add(level, level, run_at - self.MARGIN, 0, run_at)
        segments.add(level, level, run_at, id)
        return segments


def _claim_order(priority: int, run_at: datetime | None, id: int) -> tuple[int, datetime, int]:
    """A sort key of claim order (higher priority first, then earlier run_at, then id); None stands for a run_at
    before year 1000."""
    return (-priority, _BEGINNING if run_at is None else run_at, id)


async def claim_jobs(
    conn: AsyncConnection,
    worker_id: str,
    queue: str,
    tasks: list[str],
    limit: int,
    marks: ReadyMarks | None = None,
) -> list[ClaimedJob]:
    """Claim up to ``limit`` ready jobs of ``queue`` whose task is in ``tasks``, each under a new lease
    (docs/protocol.md, "Claim"). With ``marks`` (one per worker and queue), the claim starts reading each
    priority level where the worker's previous claims left off; without, it reads from the beginning."""
    started = time.monotonic()
    segments = marks.segments(started) if marks is not None else FULL_PASS
    rows = await conn.rows(
        query("JobClaim"),
        {"queue": queue, "tasks": tasks, "limit": limit, "worker_id": worker_id, **segments.literals()},
        prepare=True,
    )
    if marks is not None:
        marks.learn(rows, full=segments.full, now=started)
    return [ClaimedJob(r[0], r[1], r[2], r[3], r[4], r[5], queue, r[6], 0.0, r[7]) for r in rows]


class FirstReady(NamedTuple):
    """What the probe found: the first ready job (priority, run_at, id) of each level that has one, the seconds
    the server spent finding them (the cost of reading from the front, without the round trip), and the moment
    its statement started (the server's clock), as of which a level without a row had no ready job."""

    firsts: list[tuple[int, datetime | None, int]]
    server_s: float
    at: datetime


class FirstReadyInGroups(NamedTuple):
    """What the probe of groups found: the first ready job (group, priority, run_at, id) of each group that has
    one, and the server's seconds for it."""

    firsts: list[tuple[str, int, datetime | None, int]]
    server_s: float


async def first_ready(conn: AsyncConnection, queue: str, tasks: list[str], levels: list[int]) -> FirstReady:
    """The first ready job of each of ``levels`` of ``queue``, read from the front of the ready index: the
    worker's probe for jobs before where its claims read (``ReadyMarks.probed``)."""
    rows = await conn.rows(query("JobReadyFirsts"), {"queue": queue, "tasks": tasks, "levels": levels}, prepare=True)
    priorities, run_ats, ids, server_s, at = rows[0]
    return FirstReady(list(zip(priorities or (), run_ats or (), ids or (), strict=True)), server_s, at)


async def first_ready_in_groups(conn: AsyncConnection, queue: str, probes: list[GroupProbe]) -> FirstReadyInGroups:
    """The first ready job (of any task) of each probed group of ``queue`` in its range of the grouped ready index
    (``ReadyMarks.probe_groups``): the probe for jobs before where the turns read a group."""
    rows = await conn.rows(
        query("JobReadyGroupFirsts"),
        {
            "queue": queue,
            "groups": [p.group for p in probes],
            "priorities": [p.priority for p in probes],
            "froms": [p.from_run_at for p in probes],
            "run_ats": [p.run_at for p in probes],
            "ids": [p.id for p in probes],
        },
    )
    names, priorities, run_ats, ids, server_s = rows[0]
    return FirstReadyInGroups(list(zip(names or (), priorities or (), run_ats or (), ids or (), strict=True)), server_s)


async def probe_ready(
    conn: AsyncConnection, queue: str, tasks: list[str], marks: ReadyMarks, now: float | None = None
) -> int | None:
    """The worker's probe for ready jobs before where its claims of ``queue`` read (docs/protocol.md, "Where a
    claim starts reading"): the first ready job of each level it knows, then, while that is costly, of each group
    it knows; moves those positions back. Returns how many moved, or None when no probe was due at ``now``
    (monotonic seconds; by default the clock's)."""

    def clock() -> float:
        return time.monotonic() if now is None else now

    levels = marks.probe_levels(clock())
    if levels is None:
        return None
    probe = await first_ready(conn, queue, tasks, levels)
    moved = marks.probed(probe.firsts, took_s=probe.server_s, now=clock(), levels=levels, at=probe.at)
    if groups := marks.probe_groups():
        found = await first_ready_in_groups(conn, queue, groups)
        moved += marks.probed_groups(found.firsts, took_s=found.server_s, now=clock())
    return moved


def claim_params(queue: str, tasks: list[str], limit: int, worker_id: str, segments: Segments = FULL_PASS) -> dict:
    """JobClaim's parameters (for callers that run the query themselves: plans, benchmarks); a full pass unless
    ``segments`` says otherwise."""
    return {"queue": queue, "tasks": tasks, "limit": limit, "worker_id": worker_id, **segments.params()}


async def skip_leases_ahead(conn: AsyncConnection) -> None:
    """On a claimer's new connection: move the lease sequence past any value a server crash may have taken back,
    so that a lease never repeats (docs/protocol.md, "Leases and fencing")."""
    await conn.rows(query("JobLeaseSkipAhead"))


class DueMarks:
    """Where one worker's promotions of due deferred jobs start reading each queue's range of the deferred index
    (docs/protocol.md, "Where a promotion starts reading").

    Promoting a job leaves a dead entry at the front of its queue's range; while a long transaction holds vacuum
    back, a pass that reads each queue from its beginning walks every job promoted since, once a second per
    worker. So each queue is read from where the last pass left it, less a MARGIN: the statement's now() when it
    promoted every due row it saw, else the run_at of the last row it promoted. A full pass (every queue found by
    a skip scan, each from its beginning) runs while it is cheap (its server time under CHEAP_S), and otherwise
    at a period of PERIOD_SHARE times its cost, between FULL_MIN_S and FULL_MAX_S: it finds what a position
    passed over (a retry or a producer that committed late, a row a claimer held and let go) and queues that
    were new. Such a job is still claimed meanwhile: a claim reads the rows due in the last 2 s itself."""

    MARGIN = timedelta(milliseconds=50)
    CHEAP_S = 0.003
    PERIOD_SHARE = 20
    FULL_MIN_S = 1.0
    FULL_MAX_S = 30.0

    __slots__ = ("_next_full", "_since")

    def __init__(self) -> None:
        self._since: dict[str, datetime] = {}
        self._next_full = 0.0

    def positions(self, now: float) -> dict[str, datetime] | None:
        """Each queue's position for a pass made at ``now`` (monotonic seconds), or None for a full pass."""
        return None if now >= self._next_full else dict(self._since)

    def learn(
        self,
        promoted: Sequence[tuple[str, int, datetime | None]],
        *,
        limit: int,
        at: datetime,
        server_s: float,
        full: bool,
        now: float,
    ) -> None:
        """Move each queue's position after a pass (``promoted``: per queue read, the rows promoted and the run_at
        of the last; ``at``: the statement's now()); after a full pass, set when the next one runs."""
        for queue, count, last in promoted:
            if count >= limit and last is not None:  # more may be due: go on from the last row promoted
                self._since[queue] = last - self.MARGIN
            else:
                self._since[queue] = at - self.MARGIN
        if full:
            if server_s < self.CHEAP_S:
                self._next_full = now
            else:
                self._next_full = now + min(max(server_s * self.PERIOD_SHARE, self.FULL_MIN_S), self.FULL_MAX_S)


async def promote_due(conn: AsyncConnection, limit: int = 5000, marks: DueMarks | None = None) -> int:
    """Move deferred jobs that fell due into the ready index (at most ``limit`` per queue); returns how many.
    The claim is correct without it; with it, the claim's sort of due rows stays small. With ``marks`` (one per
    worker), each queue is read from where the worker's last pass left it unless a full pass is due."""
    return sum((await promote_due_by_queue(conn, limit, marks)).values())


async def promote_due_by_queue(
    conn: AsyncConnection, limit: int = 5000, marks: DueMarks | None = None
) -> dict[str, int]:
    """promote_due, returning how many jobs of each queue it promoted; wakes the workers of those queues."""
    now = time.monotonic()
    since = marks.positions(now) if marks is not None else None
    params = {
        "limit": limit,
        "queues": None if since is None else list(since),
        "froms": None if since is None else list(since.values()),
    }
    queues, counts, lasts, at, server_s = (await conn.rows(query("JobPromoteDue"), params, prepare=True))[0]
    promoted = list(zip(queues or (), counts or (), lasts or (), strict=True))
    if marks is not None:
        marks.learn(promoted, limit=limit, at=at, server_s=server_s, full=since is None, now=now)
    by_queue = {queue: count for queue, count, _ in promoted if count}
    if by_queue:
        # Every worker of those queues looks again (a retry's backoff or a deferred job's delay ended, whose due
        # time some never heard of); the one that promoted is woken by its caller too, even without LISTEN.
        await conn.rows(query("QueueNotifyMany"), {"queues": sorted(by_queue), "ats": None})
    return by_queue


async def ready_depth(conn: AsyncConnection, queues: list[str]) -> list[tuple[str, int, float]]:
    """Ready jobs and the age of the oldest, per queue (read through the claim's partial index)."""
    found = []
    for queue in queues:
        row = await conn.row(query("QueueReadyDepth"), {"queue": queue})
        found.append((queue, row[0], row[1]) if row else (queue, 0, 0.0))
    return found


async def held_back(conn: AsyncConnection, queues: list[str]) -> list[tuple[str, str, int]]:
    """Ready jobs held back by each limit, as (queue, control, count), for the queues that have limits
    (docs/protocol.md, "Concurrency limits" and "Group rates")."""
    found = []
    for queue in queues:
        row = await conn.row(query("QueueHeldBack"), {"queue": queue})
        if row is not None:
            found += [
                (queue, "max_running", row[0]),
                (queue, "group_concurrency", row[1]),
                (queue, "group_rate", row[2]),
            ]
    return found


async def apply_task_limits(conn: AsyncConnection, worker_id: str, jobs: Sequence[ClaimedJob]) -> None:
    """Store the max_attempts/timeout a task declares on jobs just claimed, so the reaper uses them too."""
    await conn.rows(
        query("JobSetLimitsMany"),
        {
            "worker_id": worker_id,
            "ids": [j.id for j in jobs],
            "leases": [j.lease for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "timeouts": [j.timeout_s for j in jobs],
        },
    )


@dataclass
class RecordResult:
    """What a flush of outcomes changed: job ids written, job ids fenced off, and queues to wake."""

    written: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    retry_due: list[tuple[str, float]] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    wake_queues: set[str] = field(default_factory=set)


async def record_outcomes(conn: AsyncConnection, worker_id: str, outcomes: Sequence[Outcome]) -> RecordResult:
    """Write a batch of outcomes in one transaction, each fenced by its run's lease (docs/protocol.md, "Leases
    and fencing"), and settle the dependents of the jobs it finished. Replaying the same batch is harmless: a
    lease that no longer holds its job matches nothing."""
    by_kind: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    result = RecordResult()
    written: set[int] = set()  # leases
    settle: list[int] = []
    async with conn.transaction():
        if done := by_kind.get(OutcomeKind.SUCCEEDED):
            # Results arrive as JSON text; join them into one JSON object keyed by lease instead of re-encoding.
            with_result = [o for o in done if o.result is not None]
            rows = await conn.rows(
                query("JobSetSucceededMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in done],
                    "leases": [o.lease for o in done],
                    "results": "{" + ",".join(f'"{o.lease}":{o.result}' for o in with_result) + "}"
                    if with_result
                    else None,
                },
                # The function plans its statement with the arrays' values at each call; the call itself is
                # the same every time.
                prepare=True,
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            settle.extend(r[1] for r in rows if r[2])
        if failed := by_kind.get(OutcomeKind.FAILED):
            rows = await conn.rows(
                query("JobSetFailedMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in failed],
                    "leases": [o.lease for o in failed],
                    "errors": [o.error or "failed" for o in failed],
                    "retryable": [o.retryable for o in failed],
                    "base": [o.backoff_base_s for o in failed],
                    "cap": [o.backoff_cap_s for o in failed],
                    "after": [o.retry_after_s for o in failed],
                },
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            result.retried.extend(r[1] for r in rows if r[2] == JobState.QUEUED)
            result.retry_due.extend((r[3], r[5]) for r in rows if r[2] == JobState.QUEUED)
            settle.extend(r[1] for r in rows if r[4] and r[2] != JobState.QUEUED)
        if cancelled := by_kind.get(OutcomeKind.CANCELLED):
            rows = await conn.rows(
                query("JobSetCancelledMany"),
                {
                    "worker_id": worker_id,
                    "ids": [o.job_id for o in cancelled],
                    "leases": [o.lease for o in cancelled],
                    "errors": [o.error or "cancelled" for o in cancelled],
                },
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            settle.extend(r[1] for r in rows if r[2])
        if released := by_kind.get(OutcomeKind.RELEASED):
            rows = await conn.rows(
                query("JobReleaseMany"),
                {"worker_id": worker_id, "ids": [o.job_id for o in released], "leases": [o.lease for o in released]},
            )
            written.update(r[0] for r in rows)
            result.written.extend(r[1] for r in rows)
            result.wake_queues.update(r[2] for r in rows if r[3] == JobState.QUEUED)
            # A release of a job whose cancel was requested cancelled it: its dependents follow.
            settle.extend(r[1] for r in rows if r[3] == JobState.CANCELLED and r[4])
        # Only jobs that gained dependents need the second statement; most batches skip it.
        if settle:
            result.wake_queues.update(await _settle_dependents(conn, settle))
        if result.wake_queues:
            await conn.rows(query("QueueNotifyMany"), {"queues": sorted(result.wake_queues), "ats": None})
    result.fenced = [o.job_id for o in outcomes if o.lease not in written]
    return result


async def _settle_dependents(conn: AsyncConnection, finished_ids: list[int]) -> list[str]:
    row = await conn.row(query("JobSettleDependents"), {"ids": finished_ids})
    return list(row[2] or []) if row else []


@dataclass
class ReapResult:
    """What a reap did; ``ran`` is False when another reaper held the lock."""

    ran: bool = True
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    workers_removed: int = 0


async def reap_stale(conn: AsyncConnection, *, wait: bool = False) -> ReapResult:
    """Requeue or fail the jobs of dead workers and overdue runs, then forget dead workers; each worker is
    judged by the stale-after and timeout grace it registered (docs/protocol.md, "Reaper"). Only one reaper
    runs at a time: with ``wait`` False another's lock makes this a no-op."""
    async with conn.transaction():
        if wait:
            await conn.rows(query("JobReapLock"))
        else:
            locked = await conn.row(query("JobReapLockTry"))
            if not (locked and locked[0]):
                return ReapResult(ran=False)
        rows = sorted(await conn.rows(query("JobReap")))
        result = ReapResult(
            requeued=[r[0] for r in rows if r[1] == JobState.QUEUED],
            failed=[r[0] for r in rows if r[1] == JobState.FAILED],
            cancelled=[r[0] for r in rows if r[1] == JobState.CANCELLED],
        )
        queues = {r[2] for r in rows if r[1] == JobState.QUEUED}
        if result.failed or result.cancelled:
            queues.update(await _settle_dependents(conn, result.failed + result.cancelled))
        if queues:
            await conn.rows(query("QueueNotifyMany"), {"queues": sorted(queues), "ats": None})
        result.workers_removed = len(await conn.rows(query("WorkerDeleteStale")))
    return result


async def set_progress(conn: AsyncConnection, worker_id: str, job_id: int, lease: int, progress_json: str) -> bool:
    """Store a running job's progress; False when the run's lease no longer holds the job."""
    rows = await conn.rows(
        query("JobSetProgress"), {"id": job_id, "worker_id": worker_id, "lease": lease, "progress": progress_json}
    )
    return bool(rows)


async def running_for_worker(conn: AsyncConnection, worker_id: str) -> list[tuple[int, int]]:
    """(job id, lease) of every job the database has running for this worker."""
    return [(r[0], r[1]) for r in await conn.rows(query("JobListRunningForWorker"), {"worker_id": worker_id})]


async def cancel_requested(conn: AsyncConnection, worker_id: str) -> set[int]:
    """The leases of this worker's running jobs whose cancellation was requested."""
    return {r[0] for r in await conn.rows(query("JobListCancelRequested"), {"worker_id": worker_id})}


class FlowWait(NamedTuple):
    """What a worker whose claim found nothing waits for (QueueFlowWait): whether its queues have flow control at
    all, whether any caps its running jobs, and the seconds until the first bucket that had no whole token when
    the claim started has one (None: no such bucket; negative: it came while the claim ran)."""

    controlled: bool
    capped: bool
    token_in: float | None


async def flow_wait(conn: AsyncConnection, queues: list[str], since: float) -> FlowWait:
    """After a claim of ``queues`` that started ``since`` seconds ago found nothing."""
    row = await conn.row(query("QueueFlowWait"), {"queues": queues, "since": since})
    assert row is not None
    return FlowWait(bool(row[0]), bool(row[1]), None if row[2] is None else float(row[2]))


async def rate_limited_backlog(conn: AsyncConnection, queues: list[str], tasks: list[str]) -> bool:
    """Whether ready jobs of these queues and tasks are held back only by flow control (a rate, or a cap on
    running jobs), not by a pause."""
    row = await conn.row(query("QueueRateLimitedBacklog"), {"queues": queues, "tasks": tasks})
    return bool(row and row[0])
