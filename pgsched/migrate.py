"""Schema migrations: numbered ``sql/NNNN_name.sql`` files applied in order, each in its own transaction,
under an advisory lock so that concurrent migrates cannot race."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pgsched.db import Connection
from pgsched.errors import DatabaseError
from pgsched.sqlfiles import query, schema, sql_dir

_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")
# A migration waits at most LOCK_WAIT for a table lock, then lets go and tries again a moment later: while its
# request for an ACCESS EXCLUSIVE lock waits behind someone's long transaction, every claim and add on that
# table waits behind the request. In the pauses between tries they pass. It gives up after LOCK_TRIES_S.
LOCK_WAIT = "2s"
LOCK_PAUSE_S = 1.0
LOCK_TRIES_S = 300.0
_LOCK_NOT_AVAILABLE = "55P03"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(folder: Path | None = None) -> list[Migration]:
    """The migration files shipped with sched, in version order."""
    found = []
    for path in (folder or sql_dir()).glob("*.sql"):
        match = _FILE_NAME.fullmatch(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError("two migration files share a version number")
    return found


def use_schema(conn: Connection) -> None:
    """Inside a transaction: create the installation's schema if missing, and resolve unqualified names there
    until the transaction ends (migrations and the roles script name objects without a schema)."""
    name = schema()
    exists = conn.row(query("SchemaExists"), {"schema": name})
    if not (exists and exists[0]):
        conn.run(query("SchemaCreate"))
    conn.run(query("SchemaUse"), {"schema": name})


def applied(conn: Connection) -> dict[int, str]:
    """Applied versions and their checksums; empty on a database sched never touched."""
    exists = conn.row(query("MigrationTableExists"))
    if not (exists and exists[0]):
        return {}
    return {version: checksum for version, _name, checksum in conn.rows(query("MigrationListApplied"))}


def pending(conn: Connection, folder: Path | None = None) -> list[Migration]:
    """Migrations not yet applied here."""
    done = applied(conn)
    return [m for m in available(folder) if m.version not in done]


def apply(conn: Connection, folder: Path | None = None) -> list[Migration]:
    """Apply every pending migration and return them; a re-run applies nothing."""
    if conn.pooled:
        # Behind a transaction pooler a session's lock would stay on a server connection that the pool hands to
        # others: there the lock and every migration share one transaction (all or nothing).
        def all_in_one() -> list[Migration]:
            with conn.transaction():
                conn.run(query("MigrationLockTransaction"))
                conn.run(query("MigrationSetLockTimeout"), {"timeout": LOCK_WAIT})
                todo = pending(conn, folder)
                for migration in todo:
                    _run_one(conn, migration)
                return todo

        return _retrying_lock_waits(all_in_one)
    conn.run(query("MigrationLock"))
    try:
        # Read the state only after taking the lock: another migrate may just have finished.
        todo = pending(conn, folder)
        for migration in todo:
            _retrying_lock_waits(lambda m=migration: _apply_one(conn, m))
        return todo
    finally:
        conn.run(query("MigrationUnlock"))


def _apply_one(conn: Connection, migration: Migration) -> None:
    with conn.transaction():
        conn.run(query("MigrationSetLockTimeout"), {"timeout": LOCK_WAIT})
        _run_one(conn, migration)


def _run_one(conn: Connection, migration: Migration) -> None:
    use_schema(conn)
    conn.run(migration.sql)
    conn.run(
        query("MigrationRecord"),
        {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
    )


def _retrying_lock_waits(attempt: Callable[[], _T]) -> _T:
    """Run ``attempt`` (a whole transaction) again while it fails for a table lock it could not get in time."""
    give_up_at = time.monotonic() + LOCK_TRIES_S
    while True:
        try:
            return attempt()
        except DatabaseError as exc:
            if getattr(exc.__context__, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            if time.monotonic() > give_up_at:
                raise DatabaseError(
                    f"a migration could not lock sched's tables for {LOCK_TRIES_S:g}s: another transaction holds "
                    "them (see pg_stat_activity); run `sched migrate` again once it ends"
                ) from None
        time.sleep(LOCK_PAUSE_S)
