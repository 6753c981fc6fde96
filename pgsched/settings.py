"""Configuration from SCHED_* environment variables and ``.env``; CLI flags override it."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgsched.durations import parse_duration


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class Settings(BaseSettings):
    """Every setting sched reads; each field is ``SCHED_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SCHED_", env_file=".env", extra="ignore")

    database_url: SecretStr | None = None
    data_dir: Path | None = None
    app: str | None = None
    max_payload_bytes: int = Field(default=1024 * 1024, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=1000)
    job_timeout: Seconds = 300.0
    retention: Seconds = 7 * 86400.0
    stale_after: Seconds = 30.0
    poll_interval: Seconds = 1.0
    # How long past its timeout a running job may go before the reaper takes it back (DESIGN §8).
    timeout_grace: Seconds = 10.0
    # How durable a worker's claims and outcomes are when its commit returns (PostgreSQL's synchronous_commit
    # for those sessions): "off" returns before the WAL flush and before any standby has it; "on" (or
    # "remote_write") waits, so a failover cannot roll a finished job back and run it again (README, Deploying).
    worker_commit: Literal["off", "local", "remote_write", "on"] = "off"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment and ``.env``, then apply the non-None overrides given by CLI flags."""
    from pydantic import ValidationError

    from pgsched.errors import InvalidInput

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "setting"
        raise InvalidInput(f"invalid setting SCHED_{field.upper()}: {first['msg']}") from None


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: SCHED_DATABASE_URL, or the embedded server's when it is unset."""
    from pgsched.quicksettings import resolve_dsn as resolve

    return resolve(settings)
