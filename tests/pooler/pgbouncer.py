"""A PgBouncer in transaction pooling mode, started by a test in a folder of its own and run as the system's
``postgres`` user (PgBouncer refuses to run as root), in front of the test server."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
RUN_AS = "postgres"


def available() -> str | None:
    """Why PgBouncer cannot be started here, or None when it can."""
    if not Path(PGBOUNCER).exists():
        return "PgBouncer is not installed (apt-get install pgbouncer)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"PgBouncer runs as the user {RUN_AS!r}, which does not exist here"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """``start()``, ``url(dsn)`` (the same database through the pooler), ``log()``, ``stop()``."""

    def __init__(self, server_dsn: str, *, pool_size: int = 4, pool_mode: str = "transaction") -> None:
        server = conninfo_to_dict(server_dsn)
        self.server_host = server.get("host", "127.0.0.1")
        self.server_port = int(server.get("port", 5432))
        self.server_user = server.get("user", "root")
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> PgBouncer:
        self.folder = Path(tempfile.mkdtemp(prefix="sched-pgbouncer-"))
        self.folder.chmod(0o755)
        self.port = free_port()
        # auth_type = trust checks no password, but PgBouncer 1.18 still looks the user up in auth_file.
        (self.folder / "users.txt").write_text(f'"{self.server_user}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server_host} port={self.server_port} user={self.server_user}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.folder / 'users.txt'}",
                    f"pool_mode = {self.pool_mode}",
                    f"default_pool_size = {self.pool_size}",
                    "min_pool_size = 0",
                    "reserve_pool_size = 0",
                    "max_client_conn = 500",
                    "max_db_connections = 0",
                    "server_check_delay = 0",
                    f"logfile = {self.folder / 'pgbouncer.log'}",
                    f"pidfile = {self.folder / 'pgbouncer.pid'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            )
        )
        user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
        if user is not None:
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.folder / "pgbouncer.ini")],
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PgBouncer exited at start: {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"PgBouncer did not listen on {self.port}: {self.log()[-2000:]}")

    def url(self, dsn: str) -> str:
        """``dsn``'s database through this PgBouncer."""
        given = conninfo_to_dict(dsn)
        return make_conninfo(
            host="127.0.0.1", port=self.port, user=self.server_user, dbname=given.get("dbname", "postgres")
        )

    def log(self) -> str:
        if self.folder is None or not (self.folder / "pgbouncer.log").exists():
            return ""
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
