"""Schema migrations: numbered ``sql/NNNN_name.sql`` files applied in order, each in its own transaction,
under an advisory lock so that concurrent migrates cannot race."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pgsched.db import Connection
from pgsched.errors import DatabaseError
from pgsched.sqlfiles import query, schema, sql_dir

_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")


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
        with conn.transaction():
            conn.run(query("MigrationLockTransaction"))
            todo = pending(conn, folder)
            for migration in todo:
                _apply_one(conn, migration)
            return todo
    conn.run(query("MigrationLock"))
    try:
        # Read the state only after taking the lock: another migrate may just have finished.
        todo = pending(conn, folder)
        for migration in todo:
            _apply_one(conn, migration)
        return todo
    finally:
        conn.run(query("MigrationUnlock"))


def _apply_one(conn: Connection, migration: Migration) -> None:
    with conn.transaction():
        use_schema(conn)
        conn.run(migration.sql)
        conn.run(
            query("MigrationRecord"),
            {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
        )
