"""Database access: the only module that imports psycopg. It connects, runs named queries, copies rows in,
and translates psycopg's errors into sched's own, with any password taken out of their text."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.sql
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb, set_json_loads

from pgsched.errors import DatabaseError, DatabaseUnavailable, InvalidInput, SchedError

__all__ = ["AsyncConnection", "Connection", "Jsonb", "connect", "connect_async", "redact"]

POOL_MODE_ENV = "SCHED_POOL_MODE"
# What sits between sched and the server: "auto" finds out on each new connection; "session" is a direct
# connection or a session-mode pool (a whole session per client); "transaction" is a pool that hands the server
# connection to another client after each transaction (PgBouncer's pool_mode = transaction). README, "Behind a
# connection pooler".
POOL_MODES = ("auto", "session", "transaction")

_PASSWORD_IN_URL = re.compile(r"(://[^:/?#@\s]*:)([^@\s]*)(@)")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_known_secrets: set[str] = set()


def remember_secret(dsn: str) -> None:
    """Note the password inside ``dsn`` so that ``redact`` removes it from any text, wherever it appears."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        _known_secrets.add(str(password))


def redact(text: str) -> str:
    """Return ``text`` with every DSN password (in URLs, key=value strings, or remembered) replaced by ***."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    text = _PASSWORD_IN_KV.sub(r"\1***", text)
    for secret in _known_secrets:
        text = text.replace(secret, "***")
    return text


class _JsonbFromText(Dumper):
    """Binary jsonb from text that is already JSON (payloads are validated and encoded once, up front):
    the format's version byte and the text, with no decoding and re-encoding per row."""

    format = Format.BINARY
    oid = 3802  # jsonb

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + (obj if isinstance(obj, str) else json.dumps(obj)).encode()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return redact(lines[0] if lines else type(exc).__name__)


def translate(exc: psycopg.Error) -> SchedError:
    """Map a psycopg error to the SchedError a caller should see."""
    if isinstance(exc, pg_errors.SerializationFailure):
        return DatabaseError(
            f"the transaction's snapshot is out of date ({_first_line(exc)}); run the transaction again"
        )
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not isinstance(
        exc, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable)
    ):
        return DatabaseUnavailable(f"cannot reach the database: {_first_line(exc)}")
    if isinstance(exc, pg_errors.UniqueViolation) and exc.diag.constraint_name == "sched_jobs_live_dedupe_key":
        from pgsched.errors import KeyTaken

        return KeyTaken(f"a live job holds this dedupe key: {_first_line(exc)}")
    if isinstance(exc, (pg_errors.InvalidSqlStatementName, pg_errors.DuplicatePreparedStatement)):
        # A prepared statement missing or taken: the server session changed under this connection, which only
        # a transaction pooler that sched did not recognise does.
        return DatabaseError(
            f"database error: {_first_line(exc)} (behind a transaction pooler? set {POOL_MODE_ENV}=transaction)"
        )
    if isinstance(exc, (pg_errors.IntegrityError, pg_errors.DataError)):
        return InvalidInput(f"the database rejected the input: {_first_line(exc)}")
    if isinstance(exc, pg_errors.UndefinedTable):
        from pgsched.errors import MigrationsPending

        return MigrationsPending("the sched tables do not exist here; run `sched migrate`")
    return DatabaseError(f"database error: {_first_line(exc)}")


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise psycopg errors raised inside the block as SchedErrors."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from None


def _has_rows(cur: psycopg.Cursor | psycopg.AsyncCursor) -> bool:
    # The result's status, not cursor.description, which builds a Column object per column on every call.
    result = cur.pgresult
    return result is not None and result.status == _TUPLES_OK


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE


class Connection:
    """A synchronous connection that runs named queries in autocommit mode unless inside ``transaction()``.
    ``pooled`` says whether it goes through a transaction pooler, where nothing may outlive a transaction."""

    def __init__(self, raw: psycopg.Connection, *, pooled: bool = False) -> None:
        self.raw = raw
        self.pooled = pooled
        self.commit_level: str | None = None

    def commit_level_each_transaction(self, level: str) -> None:
        """As AsyncConnection.commit_level_each_transaction: for a producer behind a transaction pooler."""
        self.commit_level = level

    @contextmanager
    def _committing(self) -> Iterator[None]:
        # With a commit level, a statement outside a transaction gets one of its own that sets the level.
        if self.commit_level is None or self.raw.info.transaction_status != _IDLE:
            yield
            return
        with self.transaction():
            yield

    def rows(self, sql: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[tuple]:
        try:
            with self._committing():
                cur = self.raw.execute(sql, params)
                return cur.fetchall() if _has_rows(cur) else []
        except psycopg.Error as exc:
            raise translate(exc) from None

    def row(self, sql: str, params: dict[str, Any] | Sequence[Any] | None = None) -> tuple | None:
        try:
            with self._committing():
                cur = self.raw.execute(sql, params)
                return cur.fetchone() if _has_rows(cur) else None
        except psycopg.Error as exc:
            raise translate(exc) from None

    def run(self, sql: str, params: dict[str, Any] | Sequence[Any] | None = None) -> int:
        """Execute and return the number of rows affected."""
        try:
            with self._committing():
                return self.raw.execute(sql, params).rowcount
        except psycopg.Error as exc:
            raise translate(exc) from None

    def records(self, sql: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by the query's column names: the query, not a field list here, names the fields."""
        try:
            with self.raw.cursor(row_factory=dict_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall() if _has_rows(cur) else []
        except psycopg.Error as exc:
            raise translate(exc) from None

    def typed(self, row_type: Callable[..., T], sql: str, params: dict[str, Any] | None = None) -> list[T]:
        """Rows built by ``row_type`` (a dataclass) from the query's column names, through psycopg's class_row."""
        try:
            with self.raw.cursor(row_factory=class_row(row_type)) as cur:
                cur.execute(sql, params)
                return cur.fetchall() if _has_rows(cur) else []
        except psycopg.Error as exc:
            raise translate(exc) from None

    def copy_rows(self, sql: str, types: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Stream rows through binary COPY, typed with ``types``; json/jsonb values are already-encoded text."""
        with translated(), self.raw.cursor() as cur:
            cur.adapters.register_dumper(None, _JsonbFromText)
            with cur.copy(sql) as copy:
                copy.set_types(types)
                for values in rows:
                    copy.write_row(values)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        outermost = self.raw.info.transaction_status == _IDLE
        with translated(), self.raw.transaction():
            if self.commit_level is not None and outermost:
                from pgsched.sqlfiles import query

                self.raw.execute(query("TransactionSetSynchronousCommit"), {"level": self.commit_level})
            yield self

    @property
    def lost(self) -> bool:
        """Whether the connection was lost (its server went away or failed over), not closed on purpose."""
        return self.raw.broken

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncConnection:
    """An asyncio connection with the same verbs, plus pipelines and notifications for the worker.
    ``pooled`` as for Connection; ``commit_level``, set only on a pooled connection, is the synchronous_commit
    that each of its transactions sets for itself (see ``commit_level_each_transaction``)."""

    def __init__(self, raw: psycopg.AsyncConnection, *, pooled: bool = False) -> None:
        self.raw = raw
        self.pooled = pooled
        self.commit_level: str | None = None

    def commit_level_each_transaction(self, level: str) -> None:
        """Run every statement in a transaction that sets synchronous_commit to ``level`` for itself. Behind a
        transaction pooler a session setting would be left on a server connection for other clients and be
        missing from this client's next transaction; the price is three more round trips per autocommit
        statement and one per transaction, paid only there."""
        self.commit_level = level

    async def _execute(self, sql: str, params: dict[str, Any] | None, prepare: bool | None) -> psycopg.AsyncCursor:
        if self.pooled and prepare:
            # A server-side prepared statement lives in one server session; behind a transaction pooler the next
            # execution may reach another one (where it is missing, or is another client's statement).
            prepare = False
        if self.commit_level is not None and self.raw.info.transaction_status == _IDLE:
            async with self.transaction():
                return await self.raw.execute(sql, params, prepare=prepare)
        return await self.raw.execute(sql, params, prepare=prepare)

    async def rows(self, sql: str, params: dict[str, Any] | None = None, *, prepare: bool | None = None) -> list:
        try:
            cur = await self._execute(sql, params, prepare)
            return await cur.fetchall() if _has_rows(cur) else []
        except psycopg.Error as exc:
            raise translate(exc) from None

    async def row(self, sql: str, params: dict[str, Any] | None = None) -> tuple | None:
        try:
            cur = await self._execute(sql, params, None)
            return await cur.fetchone() if _has_rows(cur) else None
        except psycopg.Error as exc:
            raise translate(exc) from None

    async def run(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Execute and return the number of rows affected."""
        try:
            return (await self._execute(sql, params, None)).rowcount
        except psycopg.Error as exc:
            raise translate(exc) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        outermost = self.raw.info.transaction_status == _IDLE
        try:
            async with self.raw.transaction():
                if self.commit_level is not None and outermost:
                    from pgsched.sqlfiles import query

                    await self.raw.execute(query("TransactionSetSynchronousCommit"), {"level": self.commit_level})
                yield self
        except psycopg.Error as exc:
            raise translate(exc) from None

    async def listen(self, channels: Sequence[str]) -> None:
        for channel in channels:
            await self.rows(f'LISTEN "{channel}"')

    async def notifications(self, timeout: float) -> list[tuple[str, str]]:
        """Wait up to ``timeout`` seconds for notifications; return (channel, payload) pairs received."""
        found: list[tuple[str, str]] = []
        try:
            async for note in self.raw.notifies(timeout=timeout, stop_after=1):
                found.append((note.channel, note.payload))
            # Drain whatever else already arrived without waiting again.
            async for note in self.raw.notifies(timeout=0.0):
                found.append((note.channel, note.payload))
        except psycopg.Error as exc:
            raise translate(exc) from None
        return found

    @property
    def broken(self) -> bool:
        return self.raw.broken or self.raw.closed

    async def close(self) -> None:
        await self.raw.close()


def _load_json(data: bytes | bytearray | memoryview) -> Any:
    # Most payloads of small jobs are empty objects; skip the decoder for them.
    if data == b"{}":
        return {}
    return json.loads(data)


def _options(dsn: str, application_name: str) -> dict[str, Any]:
    """Connection settings sched wants, except those the DSN sets itself (the user's choice wins)."""
    # Keepalives and a user timeout notice a silently dead peer (a partition, a replaced server) within about
    # half a minute instead of the kernel's default quarter of an hour; they are ignored on Unix sockets.
    wanted: dict[str, Any] = {
        "autocommit": True,
        "application_name": application_name,
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        given = {}
    return {key: value for key, value in wanted.items() if key not in given}


_chosen: dict[str, str] = {}


def use_pool_mode(mode: str) -> None:
    """Make ``mode`` this process's pool mode (settings call this once they are read, ``.env`` included)."""
    _chosen["pool_mode"] = mode


def pool_mode() -> str:
    """What sits between sched and the server: as the settings chose, else SCHED_POOL_MODE, else auto."""
    mode = (_chosen.get("pool_mode") or os.environ.get(POOL_MODE_ENV) or "auto").strip().lower()
    if mode not in POOL_MODES:
        raise InvalidInput(f"invalid setting {POOL_MODE_ENV}: {mode!r} (use auto, session or transaction)")
    return mode


def _pooled(raw: psycopg.Connection | psycopg.AsyncConnection, server_pid: int | None, mode: str) -> bool:
    """Whether ``raw`` goes through a transaction pooler; if so, psycopg prepares no statement on it by itself
    (it would after five executions of one query: see AsyncConnection._execute for why that breaks)."""
    # In auto mode: a pooler invents the process id it announces at start-up (it has no single server process to
    # name), so the server's own answer differs from it. A session-mode pool is taken for a transaction one:
    # nothing breaks, only prepared statements and LISTEN on this URL are given up (SCHED_POOL_MODE=session
    # keeps them).
    pooled = server_pid != raw.info.backend_pid if mode == "auto" else mode == "transaction"
    if pooled:
        raw.prepare_threshold = None
    return pooled


def connect(dsn: str, *, application_name: str = "sched", mode: str | None = None) -> Connection:
    """Open a connection to ``dsn``; an unreachable server raises DatabaseUnavailable with no password.
    ``mode`` overrides SCHED_POOL_MODE."""
    remember_secret(dsn)
    mode = mode or pool_mode()
    with translated():
        raw = psycopg.connect(dsn, **_options(dsn, application_name))
        try:
            server_pid = _server_pid(raw) if mode == "auto" else None
        except BaseException:
            raw.close()
            raise
    return Connection(raw, pooled=_pooled(raw, server_pid, mode))


def _server_pid(raw: psycopg.Connection) -> int:
    from pgsched.sqlfiles import query

    row = raw.execute(query("SessionBackendPid"), prepare=False).fetchone()
    return row[0] if row else 0


async def connect_async(
    dsn: str, *, application_name: str = "sched-worker", mode: str | None = None
) -> AsyncConnection:
    """Open an asyncio connection to ``dsn``; ``mode`` overrides SCHED_POOL_MODE."""
    from pgsched.sqlfiles import query

    remember_secret(dsn)
    mode = mode or pool_mode()
    raw = None
    try:
        raw = await psycopg.AsyncConnection.connect(dsn, **_options(dsn, application_name))
        server_pid = None
        if mode == "auto":
            row = await (await raw.execute(query("SessionBackendPid"), prepare=False)).fetchone()
            server_pid = row[0] if row else 0
    except psycopg.Error as exc:
        if raw is not None:
            await raw.close()
        raise translate(exc) from None
    set_json_loads(_load_json, raw)
    return AsyncConnection(raw, pooled=_pooled(raw, server_pid, mode))


def wrap(raw: psycopg.Connection) -> Connection:
    """Use a caller's own psycopg connection (and its open transaction) for sched's queries."""
    return Connection(raw)


def with_database(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (same server, same credentials)."""
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def server_address(dsn: str) -> str:
    """``host:port`` of the server ``dsn`` names, for reports (never its credentials)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{info.get('host') or 'local socket'}:{info.get('port') or 5432}"


def create_database(conn: Connection, name: str) -> None:
    """CREATE DATABASE ``name`` (quoted as an identifier)."""
    conn.run(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)).as_string(conn.raw))


def drop_database(conn: Connection, name: str) -> None:
    """DROP DATABASE IF EXISTS ``name`` WITH (FORCE): sessions still connected to it are ended."""
    statement = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
    conn.run(statement.as_string(conn.raw))


def server_version(conn: Connection) -> int:
    """The server's version number, e.g. 150020."""
    return conn.raw.info.server_version


def begin_implicit(conn: Connection) -> None:
    """Open the implicit transaction of a caller's non-autocommit connection if none is open yet, so that a
    following ``transaction()`` is a savepoint inside it rather than a transaction that commits on its own."""
    from pgsched.sqlfiles import query

    raw = conn.raw
    if not raw.autocommit and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.rows(query("TransactionOpen"))
