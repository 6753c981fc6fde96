"""`sched add` refuses bad input with one exact `Error:` line, exit code 2, no output, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

BAD_QUEUE_HINT = "use 1-64 letters, digits or _ . : -"
BAD_DURATION_HINT = "use e.g. 30s, 5m, 2h, 7d, 1h30m or plain seconds"


@pytest.fixture(scope="module")
def shared_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """One migrated database for every case here: none of them may write a row, so they cannot interfere."""
    name = f"sched_add_errors_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(server_dsn, dbname=name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sched-add-") as folder:
        root = Path(folder)
        (root / "array.json").write_text("[1, 2, 3]\n")
        (root / "bad.jsonl").write_text('{"payload": {"n": 1}}\n{"payload": {"n": 2}\n{"payload": {"n": 3}}\n')
        (root / "unknown.jsonl").write_text('{"payload": {}}\n\n{"payload": {}, "colour": "red"}\n')
        (root / "badqueue.jsonl").write_text('{"payload": {}}\n{"queue": "no spaces allowed"}\n')
        (root / "big.jsonl").write_text('{"payload": {}}\n{"payload": {}}\n{"payload": {"s": "' + "x" * 100 + '"}}\n')
        (root / "ok.jsonl").write_text('{"payload": {"n": 1}}\n{"payload": {"n": 2}}\n')
        (root / "latin1.jsonl").write_bytes(b'{"payload": {"s": "\xe9"}}\n')
        yield root


def _run(dsn: str, args: list[str], env: dict[str, str] | None, stdin: str | None, cwd: Path):
    full_env = {**os.environ, "SCHED_DATABASE_URL": dsn, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pgsched", "add", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        cwd=cwd,
    )


# (args, extra environment, stdin, the exact error line, exit code)
CASES = {
    "malformed-json": (
        ["t", "--payload", "{"],
        None,
        None,
        "payload is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
    ),
    "unclosed-string": (
        ["t", "--payload", '{"a": "b'],
        None,
        None,
        "payload is not valid JSON: Unterminated string starting at line 1 column 7",
    ),
    "array-payload": (["t", "--payload", "[1, 2]"], None, None, "payload must be a JSON object, not an array"),
    "string-payload": (["t", "--payload", '"hello"'], None, None, "payload must be a JSON object, not a string"),
    "number-payload": (["t", "--payload", "42"], None, None, "payload must be a JSON object, not a number"),
    "null-payload": (["t", "--payload", "null"], None, None, "payload must be a JSON object, not null"),
    "bool-payload": (["t", "--payload", "true"], None, None, "payload must be a JSON object, not a boolean"),
    "not-json-not-file": (
        ["t", "--payload", "hello"],
        None,
        None,
        "payload 'hello' is neither JSON nor a readable file",
    ),
    "missing-payload-file": (
        ["t", "--payload", "missing/payload.json"],
        None,
        None,
        "payload 'missing/payload.json' is neither JSON nor a readable file",
    ),
    "array-payload-file": (["t", "--payload", "array.json"], None, None, "payload must be a JSON object, not an array"),
    "array-on-stdin": (["t", "--payload", "-"], None, "[]", "payload must be a JSON object, not an array"),
    "nan-payload": (["t", "--payload", '{"a": NaN}'], None, None, "payload is not valid JSON: NaN is not allowed"),
    "nul-payload": (
        ["t", "--payload", '{"a": "x\\u0000y"}'],
        None,
        None,
        "payload must not contain NUL characters (\\u0000)",
    ),
    "oversize-payload": (
        ["t", "--payload", '{"data": "' + "x" * 40 + '"}'],
        {"SCHED_MAX_PAYLOAD_BYTES": "32"},
        None,
        "payload is 51 bytes, over the limit of 32 (SCHED_MAX_PAYLOAD_BYTES)",
    ),
    "oversize-multibyte": (
        ["t", "--payload", '{"s": "' + "é" * 20 + '"}'],
        {"SCHED_MAX_PAYLOAD_BYTES": "32"},
        None,
        "payload is 48 bytes, over the limit of 32 (SCHED_MAX_PAYLOAD_BYTES)",
    ),
    "bad-delay-unit": (["t", "--delay", "5x"], None, None, f"invalid delay '5x': {BAD_DURATION_HINT}"),
    "negative-delay": (["t", "--delay", "-5"], None, None, f"invalid delay '-5': {BAD_DURATION_HINT}"),
    "spaced-delay": (["t", "--delay", "1h 30m"], None, None, f"invalid delay '1h 30m': {BAD_DURATION_HINT}"),
    "delay-over-a-year": (["t", "--delay", "400d"], None, None, "invalid delay '400d': at most a year"),
    "bad-timeout": (["t", "--timeout", "soon"], None, None, f"invalid timeout 'soon': {BAD_DURATION_HINT}"),
    "zero-timeout": (["t", "--timeout", "0s"], None, None, "invalid timeout 0.0: must be more than 0 and at most 7d"),
    "timeout-over-7d": (
        ["t", "--timeout", "8d"],
        None,
        None,
        "invalid timeout 691200.0: must be more than 0 and at most 7d",
    ),
    "delay-and-at": (
        ["t", "--delay", "5s", "--at", "2030-01-01T00:00:00+00:00"],
        None,
        None,
        "use --delay or --at, not both",
    ),
    "at-over-a-year": (["t", "--at", "9999-12-31"], None, None, "invalid time '9999-12-31': at most a year ahead"),
    "jsonl-at-over-a-year": (
        ["t", "--jsonl", "ok.jsonl", "--at", "9999-12-31"],
        None,
        None,
        "invalid time '9999-12-31': at most a year ahead",
    ),
    "bad-at": (
        ["t", "--at", "tomorrow"],
        None,
        None,
        "invalid time 'tomorrow': use ISO 8601, e.g. 2026-01-31T09:00:00+00:00",
    ),
    "queue-with-space": (["t", "--queue", "my queue"], None, None, f"invalid queue name 'my queue': {BAD_QUEUE_HINT}"),
    "empty-queue": (["t", "--queue", ""], None, None, f"invalid queue name '': {BAD_QUEUE_HINT}"),
    "long-queue": (["t", "--queue", "q" * 65], None, None, f"invalid queue name '{'q' * 65}': {BAD_QUEUE_HINT}"),
    "queue-injection": (
        ["t", "--queue", "q'; DROP TABLE sched_jobs; --"],
        None,
        None,
        f'invalid queue name "q\'; DROP TABLE sched_jobs; --": {BAD_QUEUE_HINT}',
    ),
    "task-injection": (
        ["x'); DELETE FROM sched_jobs; --"],
        None,
        None,
        'invalid task name "x\'); DELETE FROM sched_jobs; --": use 1-128 letters, digits or _ . : -',
    ),
    "task-with-space": (
        ["send report"],
        None,
        None,
        "invalid task name 'send report': use 1-128 letters, digits or _ . : -",
    ),
    "missing-task": ([], None, None, "missing TASK (or --jsonl FILE)"),
    "priority-too-high": (
        ["t", "--priority", "1001"],
        None,
        None,
        "invalid priority 1001: must be an integer from -1000 to 1000",
    ),
    "priority-too-low": (
        ["t", "--priority", "-1001"],
        None,
        None,
        "invalid priority -1001: must be an integer from -1000 to 1000",
    ),
    "priority-not-a-number": (
        ["t", "--priority", "high"],
        None,
        None,
        "Invalid value for '--priority': 'high' is not a valid int.",
    ),
    "zero-attempts": (
        ["t", "--max-attempts", "0"],
        None,
        None,
        "invalid max attempts 0: must be an integer from 1 to 1000",
    ),
    "too-many-attempts": (
        ["t", "--max-attempts", "1001"],
        None,
        None,
        "invalid max attempts 1001: must be an integer from 1 to 1000",
    ),
    "empty-key": (["t", "--key", ""], None, None, "invalid key: must be 1-255 characters"),
    "long-key": (["t", "--key", "k" * 256], None, None, "invalid key: must be 1-255 characters"),
    "missing-after-target": (["t", "--after", "999999"], None, None, "--after 999999: no such job"),
    "zero-after-target": (["t", "--after", "0"], None, None, "--after 0: no such job"),
    "after-not-a-number": (
        ["t", "--after", "first"],
        None,
        None,
        "Invalid value for '--after': 'first' is not a valid int.",
    ),
    "unknown-option": (["t", "--colour", "red"], None, None, "No such option: --colour"),
    "jsonl-bad-line": (
        ["t", "--jsonl", "bad.jsonl"],
        None,
        None,
        "line 2: not valid JSON: Expecting ',' delimiter at column 21",
    ),
    "jsonl-unknown-field": (["t", "--jsonl", "unknown.jsonl"], None, None, "line 3: unknown field 'colour'"),
    "jsonl-bad-queue": (
        ["t", "--jsonl", "badqueue.jsonl"],
        None,
        None,
        f"line 2: invalid queue name 'no spaces allowed': {BAD_QUEUE_HINT}",
    ),
    "jsonl-oversize-line": (
        ["t", "--jsonl", "big.jsonl"],
        {"SCHED_MAX_PAYLOAD_BYTES": "64"},
        None,
        "line 3: payload is 108 bytes, over the limit of 64 (SCHED_MAX_PAYLOAD_BYTES)",
    ),
    "jsonl-on-stdin": (
        ["t", "--jsonl", "-"],
        None,
        '{"payload": {}}\n[1]\n',
        "line 2: each line must be a JSON object",
    ),
    "jsonl-missing-file": (
        ["t", "--jsonl", "nope.jsonl"],
        None,
        None,
        "cannot read 'nope.jsonl': No such file or directory",
    ),
    "jsonl-not-utf8": (["t", "--jsonl", "latin1.jsonl"], None, None, "'latin1.jsonl' is not UTF-8 text"),
    "jsonl-with-after": (
        ["t", "--jsonl", "ok.jsonl", "--after", "1"],
        None,
        None,
        "--after cannot be combined with --jsonl",
    ),
    "jsonl-delay-and-at": (
        ["t", "--jsonl", "ok.jsonl", "--delay", "1s", "--at", "2030-01-01T00:00:00+00:00"],
        None,
        None,
        "use --delay or --at, not both",
    ),
    "jsonl-zero-timeout": (
        ["t", "--jsonl", "ok.jsonl", "--timeout", "0"],
        None,
        None,
        "invalid timeout 0.0: must be more than 0 and at most 7d",
    ),
    "jsonl-bad-priority": (
        ["t", "--jsonl", "ok.jsonl", "--priority", "5000"],
        None,
        None,
        "invalid priority 5000: must be an integer from -1000 to 1000",
    ),
    "bad-payload-limit-setting": (
        ["t"],
        {"SCHED_MAX_PAYLOAD_BYTES": "0"},
        None,
        "invalid setting SCHED_MAX_PAYLOAD_BYTES: Input should be greater than 0",
    ),
}


@pytest.mark.parametrize(("args", "env", "stdin", "message"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused(
    shared_dsn: str, files: Path, args: list[str], env: dict | None, stdin: str | None, message: str
) -> None:
    done = _run(shared_dsn, args, env, stdin, files)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"Error: {message}\n")
    with psycopg.connect(shared_dsn) as check:
        assert check.execute("SELECT count(*) FROM sched_jobs_all").fetchone() == (0,)
        assert check.execute("SELECT count(*) FROM sched_job_deps").fetchone() == (0,)


def test_cases_really_use_the_database(shared_dsn: str, files: Path) -> None:
    # The zero-rows check above is only meaningful if the same command with good input does write.
    done = _run(shared_dsn, ["t", "--jsonl", "ok.jsonl"], None, None, files)
    assert done.returncode == 0, done.stderr
    try:
        with psycopg.connect(shared_dsn) as check:
            assert check.execute("SELECT count(*) FROM sched_jobs_all").fetchone() == (2,)
    finally:
        with psycopg.connect(shared_dsn, autocommit=True) as check:
            check.execute("TRUNCATE sched_jobs CASCADE")
