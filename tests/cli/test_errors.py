"""User-facing errors are one line without a traceback, suggest the fix, and never show the DSN's password;
``--debug`` adds the traceback, redacted too."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PASSWORD = "Sup3rS3cret"
UNREACHABLE = f"postgresql://root:{PASSWORD}@127.0.0.1:1/x"


def _run(*args: str, dsn: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SCHED_DATABASE_URL": dsn},
        cwd=tempfile.gettempdir(),
    )


def _wrong_database(server_dsn: str, password_url) -> str:
    user = conninfo_to_dict(server_dsn).get("user") or "root"
    return password_url(server_dsn, user, PASSWORD, "sched_no_such_database")


COMMANDS = [("add", "sched.noop"), ("status",), ("migrate",), ("reap",), ("cleanup", "--dry-run"), ("cancel", "1")]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_unreachable_database_is_one_line_with_a_hint(args: tuple[str, ...]) -> None:
    done = _run(*args, dsn=UNREACHABLE)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: cannot reach the database: ")
    assert done.stderr.rstrip().endswith("(check SCHED_DATABASE_URL)")
    assert PASSWORD not in done.stderr


def test_debug_shows_a_redacted_traceback() -> None:
    done = _run("--debug", "status", dsn=UNREACHABLE)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("Error: cannot reach the database")
    assert PASSWORD not in done.stderr


def test_reachable_server_with_a_wrong_database_name(server_dsn: str, password_url) -> None:
    dsn = _wrong_database(server_dsn, password_url)
    for debug in ((), ("--debug",)):
        done = _run(*debug, "add", "sched.noop", dsn=dsn)
        assert done.returncode == 1
        assert PASSWORD not in done.stderr
        last = done.stderr.splitlines()[-1]
        assert last.startswith("Error: cannot reach the database: ")
        assert 'database "sched_no_such_database" does not exist' in last
        assert last.endswith("(check SCHED_DATABASE_URL)")
        assert ("Traceback" in done.stderr) is bool(debug)


def test_password_given_as_keyword_is_redacted_too(server_dsn: str, password_url) -> None:
    dsn = make_conninfo(_wrong_database(server_dsn, password_url), password=PASSWORD)
    done = _run("--debug", "status", dsn=dsn)
    assert done.returncode == 1
    assert PASSWORD not in done.stderr


def test_missing_tables_suggest_migrate(empty_dsn: str) -> None:
    for args in (("add", "sched.noop"), ("status",), ("add", "--jsonl", "-")):
        done = _run(*args, dsn=empty_dsn, stdin='{"task": "sched.noop"}\n')
        assert done.returncode == 1, args
        assert done.stderr == "Error: the sched tables do not exist here; run `sched migrate`\n", args


def test_pending_migration_check_suggests_migrate(empty_dsn: str) -> None:
    done = _run("migrate", "--check", dsn=empty_dsn)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith("run `sched migrate`")


def test_usage_errors_are_one_line_exit_2(dsn: str) -> None:
    for args in (("add", "sched.noop", "--priority", "lots"), ("add", "sched.noop", "--delay", "soon"), ("nope",)):
        done = _run(*args, dsn=dsn)
        assert done.returncode == 2, args
        assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
