"""Least-privilege group roles (``sched_producer``, ``sched_worker``) and their grants, from ``sql/roles.sql``."""

from __future__ import annotations

from pgsched.db import Connection
from pgsched.sqlfiles import query, sql_dir

ROLES = ("sched_producer", "sched_worker")


def installed(conn: Connection) -> bool:
    """Whether both group roles exist on this server."""
    row = conn.row(query("RoleCountSched"), {"roles": list(ROLES)})
    return bool(row and row[0] == len(ROLES))


def apply_roles(conn: Connection) -> None:
    """Create the group roles if missing and set their grants on this database, in one transaction."""
    script = (sql_dir() / "roles.sql").read_text()
    # The migrate lock: grants must not interleave with a migration creating the tables they name.
    conn.run(query("MigrationLock"))
    try:
        with conn.transaction():
            conn.run(script)
    finally:
        conn.run(query("MigrationUnlock"))
