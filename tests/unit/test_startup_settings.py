"""``sched add`` reads its settings without pydantic only when that cannot change what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgsched import settings as settings_module
from pgsched.settings import Secret, Settings, load_settings, resolve_dsn

URL = "postgresql://root:Sup3rS3cret@127.0.0.1:5432/x"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("SCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def validated(clean_env: pytest.MonkeyPatch) -> list[dict]:
    """The calls that went through pydantic-settings."""
    calls: list[dict] = []
    read = settings_module._from_environment

    def spy(overrides: dict) -> Settings:
        calls.append(overrides)
        return read(overrides)

    clean_env.setattr(settings_module, "_from_environment", spy)
    return calls


def test_quick_defaults_equal_the_declared_settings(validated: list[dict]) -> None:
    # The quick path returns the declared defaults; pydantic-settings, given nothing, must read the same.
    assert settings_module._from_environment({}) == Settings()


def test_only_a_database_url_takes_the_quick_path(clean_env: pytest.MonkeyPatch, validated: list[dict]) -> None:
    clean_env.setenv("SCHED_DATABASE_URL", URL)
    settings = load_settings()
    assert validated == []
    assert resolve_dsn(settings) == URL
    assert "Sup3rS3cret" not in repr(settings)


@pytest.mark.parametrize("name", ["SCHED_MAX_ATTEMPTS", "sched_max_attempts", "SCHED_JOB_TIMEOUT"])
def test_any_setting_add_reads_goes_through_pydantic(
    clean_env: pytest.MonkeyPatch, validated: list[dict], name: str
) -> None:
    clean_env.setenv("SCHED_DATABASE_URL", URL)
    clean_env.setenv(name, "7")
    settings = load_settings()
    assert len(validated) == 1
    assert getattr(settings, name.lower().removeprefix("sched_")) == 7


def test_a_dotenv_file_goes_through_pydantic(tmp_path: Path, validated: list[dict]) -> None:
    (tmp_path / ".env").write_text(f"SCHED_DATABASE_URL={URL}\nSCHED_MAX_ATTEMPTS=9\n")
    settings = load_settings()
    assert len(validated) == 1
    assert settings.max_attempts == 9
    assert resolve_dsn(settings) == URL


def test_no_database_url_goes_through_pydantic(validated: list[dict]) -> None:
    load_settings()
    assert len(validated) == 1


def test_an_override_goes_through_pydantic(clean_env: pytest.MonkeyPatch, validated: list[dict]) -> None:
    clean_env.setenv("SCHED_DATABASE_URL", URL)
    assert load_settings(stale_after="5s").stale_after == 5.0
    assert len(validated) == 1


def test_secret_hides_its_value() -> None:
    assert "x" not in repr(Secret("x"))
    assert Secret("x").get_secret_value() == "x"
