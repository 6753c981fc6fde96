"""Least-privilege group roles (``sched_producer``, ``sched_worker``, suffixed with the schema outside ``public``)
and their grants, from ``sql/roles.sql``."""

from __future__ import annotations

from pgsched.db import Connection
from pgsched.errors import DatabaseError
from pgsched.migrate import use_schema
from pgsched.repository import reads
from pgsched.sqlfiles import name_roles, query, role_name, sql_dir


def names() -> tuple[str, str]:
    """The producer and worker roles of this process's installation."""
    return role_name("sched_producer"), role_name("sched_worker")


def installed(conn: Connection) -> bool:
    """Whether both group roles of this installation exist on the server."""
    return len(reads.existing_roles(conn, list(names()))) == 2


def check_privileges(conn: Connection) -> None:
    """Raise one line naming the missing privilege and what to ask an admin for, before anything changes.

    Creating a role needs CREATEROLE, which managed servers rarely give an application's owner; granting to
    roles that exist needs only ownership of sched's objects and of the database."""
    wanted = names()
    existing = reads.existing_roles(conn, list(wanted))
    missing = [role for role in wanted if role not in existing]
    caller = reads.caller_privileges(conn)
    user = caller.user
    if missing and not caller.can_create_roles:
        creates = "; ".join(f"CREATE ROLE {role} NOLOGIN" for role in missing)
        raise DatabaseError(
            f"creating {' and '.join(missing)} needs the CREATEROLE privilege, which {user} lacks; "
            f"ask an admin to run `{creates};` (or to grant you CREATEROLE), then run `sched migrate --roles` again"
        )
    if not caller.can_grant_database:
        raise DatabaseError(
            f"granting CONNECT and TEMPORARY on this database to the sched roles needs ownership of the database, "
            f"which {user} lacks; ask an admin to make {user} its owner, or to run `sched migrate --roles` as its owner"
        )


def apply_roles(conn: Connection) -> None:
    """Create the group roles if missing and set their grants on this database, in one transaction."""
    script = name_roles((sql_dir() / "roles.sql").read_text())
    # The migrate lock: grants must not interleave with a migration creating the tables they name.
    conn.run(query("MigrationLock"))
    try:
        check_privileges(conn)
        with conn.transaction():
            use_schema(conn)
            conn.run(script)
    finally:
        conn.run(query("MigrationUnlock"))
