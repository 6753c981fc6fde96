"""Configuration from SCHED_* environment variables and ``.env``; CLI flags override it.

``Settings`` declares every setting once, with its default and its bounds. When the environment gives no setting
but SCHED_DATABASE_URL (and there is no ``.env`` and no override), every other setting is its default and there
is nothing to parse or validate: ``load_settings`` then skips pydantic-settings, whose import (its sources,
dotenv, BaseSettings) is a tenth of the start-up time of ``sched add``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal


class Secret:
    """A string that does not show itself in reprs (the counterpart of pydantic's SecretStr)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The string itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _seconds(default: float) -> Any:
    # A duration: a number of seconds or a string such as 30s or 7d, more than zero.
    return field(default=default, metadata={"seconds": True, "gt": 0})


@dataclass(frozen=True)
class Settings:
    """Every setting sched reads; each field is ``SCHED_<NAME>`` in the environment."""

    database_url: Secret | None = None
    data_dir: Path | None = None
    app: str | None = None
    max_payload_bytes: int = field(default=1024 * 1024, metadata={"gt": 0})
    # The defaults of a job; a test keeps them equal to the columns' defaults in sql/.
    max_attempts: int = field(default=3, metadata={"ge": 1, "le": 1000})
    job_timeout: float = _seconds(300.0)
    retention: float = _seconds(7 * 86400.0)
    stale_after: float = _seconds(30.0)
    poll_interval: float = _seconds(1.0)
    # How long past its timeout a running job may go before the reaper takes it back (docs/protocol.md).
    timeout_grace: float = _seconds(10.0)
    # How durable a worker's claims and outcomes are when its commit returns (PostgreSQL's synchronous_commit
    # for those sessions): "off" returns before the WAL flush and before any standby has it; "on" (or
    # "remote_write") waits, so a failover cannot roll a finished job back and run it again (README, Deploying).
    worker_commit: Literal["off", "local", "remote_write", "on"] = "off"
    # The schema that holds this installation (docs/design.md; README, A schema of its own).
    schema: str = "public"
    # A worker's URL for LISTEN only, when SCHED_DATABASE_URL goes through a transaction pooler: a direct or
    # session-mode connection (README, "Behind a connection pooler").
    listen_url: Secret | None = None
    # What sits between sched and the server: auto (find out per connection), session (direct or a session-mode
    # pool) or transaction (a transaction pooler such as PgBouncer's pool_mode = transaction). db.py, README.
    pool_mode: Literal["auto", "session", "transaction"] = "auto"


_URLS = ("database_url", "listen_url")  # secrets: they may carry a password
_NAMES = frozenset(f"SCHED_{f.name.upper()}" for f in fields(Settings))


def load_settings(**overrides: Any) -> Settings:
    """Read the environment and ``.env``, then apply the non-None overrides given by CLI flags."""
    given = {name.upper(): value for name, value in os.environ.items() if name.upper() in _NAMES}
    url = given.get("SCHED_DATABASE_URL")
    if url and len(given) == 1 and all(v is None for v in overrides.values()) and not Path(".env").exists():
        return Settings(database_url=Secret(url))
    settings = _from_environment({k: v for k, v in overrides.items() if v is not None})
    if settings.schema != "public":
        from pgsched.sqlfiles import use_schema

        use_schema(settings.schema)
    if settings.pool_mode != "auto":
        from pgsched.db import use_pool_mode

        use_pool_mode(settings.pool_mode)
    return settings


def _from_environment(overrides: dict[str, Any]) -> Settings:
    from pydantic import ValidationError

    from pgsched.errors import InvalidInput

    try:
        read = _environment_model()(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "setting"
        raise InvalidInput(f"invalid setting SCHED_{name.upper()}: {first['msg']}") from None
    values = {f.name: getattr(read, f.name) for f in fields(Settings)}
    for name in _URLS:
        if values[name] is not None:
            values[name] = Secret(values[name].get_secret_value())
    return Settings(**values)


@cache
def _environment_model() -> type:
    """A pydantic-settings model of ``Settings``: the same fields, defaults and bounds, read from the environment."""
    from typing import Annotated, get_type_hints

    from pydantic import BeforeValidator, Field, SecretStr, create_model
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from pgsched.durations import parse_duration

    def seconds(value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    class Environment(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="SCHED_", env_file=".env", extra="ignore")

    hints = get_type_hints(Settings)
    declared: dict[str, Any] = {}
    for f in fields(Settings):
        bounds = {k: v for k, v in f.metadata.items() if k != "seconds"}
        kind: Any = SecretStr | None if f.name in _URLS else hints[f.name]
        if f.metadata.get("seconds"):
            kind = Annotated[float, BeforeValidator(seconds)]
        declared[f.name] = (kind, Field(default=f.default, **bounds))
    with warnings.catch_warnings():
        # "schema" is also the name of a deprecated BaseModel method; the field shadows it on purpose.
        warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)
        return create_model("Environment", __base__=Environment, **declared)


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: SCHED_DATABASE_URL, or the embedded server's when it is unset."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from pgsched.embedded import ensure_server

    return ensure_server(settings.data_dir)
