"""The built wheel installs into a clean virtualenv, ships its SQL files, and migrates a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pgsched import db, migrate

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done


def test_wheel_installs_and_migrates(tmp_path: Path, empty_dsn: str) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)])
    (wheel,) = dist.glob("pgsched-*.whl")

    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("pgsched/sql/")}
    expected = {f"pgsched/sql/{path.relative_to(ROOT / 'sql')}" for path in (ROOT / "sql").rglob("*.sql")}
    assert "pgsched/sql/queries/jobs.sql" in expected and "pgsched/sql/0001_jobs.sql" in expected
    assert shipped == expected

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])

    # Run from a folder outside the repository, so nothing can be picked up from the checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_", "PYTHON", "VIRTUAL_ENV"))}
    env["SCHED_DATABASE_URL"] = empty_dsn
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import pgsched.sqlfiles as s; print(s.sql_dir())"], env=env, cwd=tmp_path
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    migrated = _run([str(venv / "bin" / "sched"), "migrate"], env=env, cwd=tmp_path)
    assert migrated.stdout.splitlines() == [f"{m.version:04d}_{m.name}" for m in migrate.available()]
    _run([str(venv / "bin" / "sched"), "migrate", "--check"], env=env, cwd=tmp_path)
    added = _run([str(venv / "bin" / "sched"), "add", "sched.noop"], env=env, cwd=tmp_path)
    with db.connect(empty_dsn) as conn:
        assert conn.row("SELECT task FROM sched_jobs_all WHERE id = %s", (int(added.stdout),)) == ("sched.noop",)
