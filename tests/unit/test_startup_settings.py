"""``sched add`` reads its settings without pydantic only when that cannot change what it reads."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from pgsched.quicksettings import QuickSettings, Secret, quick_settings, resolve_dsn
from pgsched.settings import Settings

URL = "postgresql://root:Sup3rS3cret@127.0.0.1:5432/x"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("SCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_quick_defaults_equal_the_declared_settings(clean_env: pytest.MonkeyPatch) -> None:
    declared = Settings()
    for f in fields(QuickSettings):
        if f.name != "database_url":
            assert getattr(declared, f.name) == f.default, f"QuickSettings.{f.name} drifted from Settings"
            assert f.name in Settings.model_fields


def test_only_a_database_url_takes_the_quick_path(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SCHED_DATABASE_URL", URL)
    settings = quick_settings()
    assert isinstance(settings, QuickSettings)
    assert resolve_dsn(settings) == URL
    assert "Sup3rS3cret" not in repr(settings)


@pytest.mark.parametrize("name", ["SCHED_MAX_ATTEMPTS", "sched_max_attempts", "SCHED_JOB_TIMEOUT"])
def test_any_setting_add_reads_goes_through_pydantic(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv("SCHED_DATABASE_URL", URL)
    clean_env.setenv(name, "7")
    settings = quick_settings()
    assert isinstance(settings, Settings)
    assert getattr(settings, name.lower().removeprefix("sched_")) == 7


def test_a_dotenv_file_goes_through_pydantic(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"SCHED_DATABASE_URL={URL}\nSCHED_MAX_ATTEMPTS=9\n")
    settings = quick_settings()
    assert isinstance(settings, Settings)
    assert settings.max_attempts == 9


def test_no_database_url_goes_through_pydantic(clean_env: pytest.MonkeyPatch) -> None:
    assert isinstance(quick_settings(), Settings)


def test_secret_hides_its_value() -> None:
    assert "x" not in repr(Secret("x"))
    assert Secret("x").get_secret_value() == "x"
