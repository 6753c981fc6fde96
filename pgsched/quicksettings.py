"""Settings for short commands without pydantic-settings, whose import (its sources, dotenv, BaseSettings) is a
tenth of the start-up time of ``sched add``.

When the environment gives only ``SCHED_DATABASE_URL`` for the settings a command reads (and there is no ``.env``),
those settings are their declared defaults, so there is nothing for pydantic-settings to parse or validate;
otherwise ``quick_settings`` defers to it. A test keeps these defaults equal to ``Settings``'s."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class Secret:
    """A string that does not show itself in reprs (the counterpart of pydantic's SecretStr)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class QuickSettings:
    """The settings ``sched add`` reads, at their defaults."""

    database_url: Secret | None = None
    data_dir: Path | None = None
    max_payload_bytes: int = 1024 * 1024
    max_attempts: int = 3
    job_timeout: float = 300.0


def quick_settings(**overrides: Any) -> Any:
    """QuickSettings when only SCHED_DATABASE_URL is given, else the fully validated ``Settings``."""
    given = {name.upper(): value for name, value in os.environ.items() if name.upper().startswith("SCHED_")}
    others = {f"SCHED_{f.name.upper()}" for f in fields(QuickSettings)} - {"SCHED_DATABASE_URL"}
    url = given.get("SCHED_DATABASE_URL")
    overridden = any(v is not None for v in overrides.values())
    if url and not others & given.keys() and not overridden and not Path(".env").exists():
        return QuickSettings(database_url=Secret(url))
    from pgsched.settings import load_settings

    return load_settings(**overrides)


def resolve_dsn(settings: Any) -> str:
    """The DSN to use: SCHED_DATABASE_URL, or the embedded server's when it is unset."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from pgsched.embedded import ensure_server

    return ensure_server(settings.data_dir)
