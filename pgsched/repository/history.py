"""The history of succeeded jobs (docs/design.md, "History and cleanup"): its slots, and emptying them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pgsched.db import Connection
from pgsched.sqlfiles import query


@dataclass(frozen=True)
class Slot:
    """One partition of the history: whether it takes new rows, and its oldest and newest finish (None: empty)."""

    number: int
    current: bool
    oldest: datetime | None
    newest: datetime | None


def slots(conn: Connection) -> tuple[list[Slot], datetime]:
    """Every slot in order, and the database's clock."""
    rows = conn.rows(query("HistorySlots"))
    return [Slot(r[0], r[1], r[2], r[3]) for r in rows], rows[0][4]


def rotate(conn: Connection, current: int, to: int) -> bool:
    """Make the empty slot ``to`` take new rows instead of ``current``; False if ``to`` is not empty or another
    cleanup moved the current slot first. Autocommitted."""
    return conn.row(query("HistoryRotate"), {"from": current, "to": to}) is not None


def truncate(conn: Connection, slot: int, older_than_s: float) -> int | None:
    """Empty ``slot`` if it does not take new rows and every job in it is older than ``older_than_s``; how many
    jobs it held, or None when it was left as it was. Autocommitted: the slot's lock ends at once."""
    row = conn.row(query("HistoryTruncate"), {"slot": slot, "older_than": timedelta(seconds=older_than_s)})
    return row[0] if row else None


def count_slot(conn: Connection, slot: int) -> int:
    """How many jobs ``slot`` holds."""
    row = conn.row(query("HistoryCountSlot"), {"slot": slot})
    return row[0] if row else 0


def count_before(conn: Connection, older_than_s: float) -> int:
    """How many jobs in the history finished more than ``older_than_s`` ago."""
    row = conn.row(query("HistoryCountBefore"), {"older_than": timedelta(seconds=older_than_s)})
    return row[0] if row else 0


def delete_before_batch(conn: Connection, older_than_s: float, batch: int) -> int:
    """Delete one batch of the jobs in the history that finished more than ``older_than_s`` ago; autocommitted."""
    row = conn.row(query("HistoryDeleteBefore"), {"older_than": timedelta(seconds=older_than_s), "batch": batch})
    return row[0] if row else 0
