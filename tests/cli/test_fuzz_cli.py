"""Fuzzing ``sched add``: whatever the arguments, the CLI answers with data and exit 0, or one ``Error:`` line and
exit 1 (operational) or 2 (bad input, nothing written); a bad ``--jsonl`` line anywhere writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgsched import cli, db

# Values a producer might type, hostile or not; argv cannot carry NUL, so NUL goes through --jsonl instead.
HOSTILE = [
    "'",
    "''",
    "'; DROP TABLE sched_jobs; --",
    "$$",
    "$q$ x $q$",
    "\\",
    "\\'",
    '"',
    "%s",
    "%(queue)s",
    "{}",
    "é日本🎉",
    "\u202e",
    "a\nb",
    "\udcff",  # an undecodable argv byte, as Python presents it
    "",
    " ",
    "-x",
]
argv_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
)
option_values = {
    "--queue": argv_text,
    "--key": argv_text,
    "--payload": st.one_of(
        argv_text, st.dictionaries(argv_text.filter(lambda s: "\udcff" not in s), argv_text, max_size=3).map(json.dumps)
    ),
    "--priority": st.one_of(st.integers(min_value=-1500, max_value=1500).map(str), argv_text),
    "--max-attempts": st.one_of(st.integers(min_value=-5, max_value=1005).map(str), argv_text),
    "--delay": st.one_of(st.sampled_from(["30s", "1h30m", "0", "367d", "9" * 50]), argv_text),
    "--at": st.one_of(st.sampled_from(["2030-01-01T00:00:00+00:00", "2030-13-01", "9999-12-31T23:59:59"]), argv_text),
    "--timeout": st.one_of(st.sampled_from(["30s", "0", "8d", "7d"]), argv_text),
    "--after": st.one_of(st.integers(min_value=-(2**64), max_value=2**64).map(str), argv_text),
}
options = st.lists(
    st.sampled_from(sorted(option_values)).flatmap(lambda name: option_values[name].map(lambda v: [name, v])),
    max_size=4,
).map(lambda pairs: [part for pair in pairs for part in pair])
add_argv = st.tuples(st.one_of(st.none(), argv_text), options, st.booleans()).map(
    lambda t: ["add", *([t[0]] if t[0] is not None else []), *t[1], *(["--json"] if t[2] else [])]
)

UNREACHABLE = "postgresql://sched@127.0.0.1:1/sched"


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run ``sched ARGV`` through the real entry point in this process; return (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["sched", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        sys.argv = old_argv
    return info.value.code, out.getvalue(), err.getvalue()


def assert_one_error_line(stderr: str) -> None:
    """Failure output is exactly one ``Error:`` line: no traceback, no internal error."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=add_argv)
@example(argv=["add", "t", "--key", "\udcff"])
@example(argv=["add", "t", "--payload", '{"a": "\udcff"}'])
@example(argv=["add", "t", "--payload", '{"a": ' + "1" * 5000 + "}"])
@example(argv=["add", "t", "--after", str(2**63)])
@example(argv=["add", "t", "--timeout", "9" * 400])
def test_add_never_shows_a_traceback(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No database answers here: valid input must get as far as connecting (exit 1), invalid input stops at 2.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCHED_DATABASE_URL", UNREACHABLE)
    code, stdout, stderr = run_in_process(argv)
    assert code in (1, 2), (argv, code, stderr)
    assert stdout == ""
    assert_one_error_line(stderr)
    if code == 1:
        assert stderr.startswith("Error: cannot reach the database"), stderr


def _argv_ok(argv: list[str]) -> bool:
    return all("\x00" not in a for a in argv)


def _count(dsn: str) -> int:
    with db.connect(dsn) as conn:
        return conn.row("SELECT count(*) FROM sched_jobs_all")[0]


def _stored(dsn: str, job_id: int) -> tuple:
    with db.connect(dsn) as conn:
        return conn.row("SELECT task, queue, dedupe_key, payload FROM sched_jobs_all WHERE id = %s", [job_id])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    task=st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True), argv_text),
    queue=st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True), argv_text),
    key=st.one_of(st.none(), argv_text),
    payload=st.dictionaries(st.sampled_from(["s", "k", "日"]), argv_text.filter(lambda s: "\udcff" not in s)),
)
def test_add_stores_exactly_what_it_accepts(
    sched: Callable, dsn: str, task: str, queue: str, key: str | None, payload: dict
) -> None:
    argv = ["add", task, "--queue", queue, "--payload", json.dumps(payload), "--json"]
    if key is not None:
        argv += ["--key", key]
    before = _count(dsn)
    result = sched(*argv, env={"PYTHONIOENCODING": "utf-8"})
    if result.returncode == 0:
        added = json.loads(result.stdout)
        stored = _stored(dsn, added["id"])
        # Examples share a database, so an earlier example may already hold this (queue, key).
        assert stored[1:3] == (queue, key)
        if not added["deduplicated"]:
            assert stored == (task, queue, key, payload)
            assert _count(dsn) == before + 1
        assert result.stderr == ""
    else:
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert_one_error_line(result.stderr)
        assert _count(dsn) == before


# --- 10,000-line --jsonl files ---------------------------------------------------------------------------------

LINES = 10_000


def _valid_line(i: int) -> str:
    record: dict = {"task": f"task.{i % 7}", "payload": {"i": i, "s": "x'; DROP TABLE sched_jobs; --"}}
    if i % 3 == 0:
        record["queue"] = f"q{i % 5}"
    if i % 11 == 0:
        record["priority"] = i % 1000
    if i % 13 == 0:
        record["delay"] = "5m"
    return json.dumps(record) + "\n"


BAD_LINES = [
    '{"task": "t", "priority": 5000}',
    '{"task": "bad name"}',
    '{"task": "t", "payload": {"a": "\\u0000"}}',
    '{"task": "t", "key": "\\ud800"}',
    '{"task": "t", "delay": "soon"}',
    '{"task": "t"',
    "[]",
    '{"task": "t", "queue": "x\'; DROP TABLE sched_jobs; --"}',
]


@pytest.fixture(scope="module")
def jsonl_lines() -> list[str]:
    """10,000 valid --jsonl lines."""
    return [_valid_line(i) for i in range(LINES)]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=1, max_value=LINES), bad=st.sampled_from(BAD_LINES), keyed=st.booleans())
@example(position=1, bad=BAD_LINES[0], keyed=False)
@example(position=LINES, bad=BAD_LINES[3], keyed=True)
def test_a_bad_line_anywhere_writes_nothing(
    sched: Callable, dsn: str, tmp_path: Path, jsonl_lines: list[str], position: int, bad: str, keyed: bool
) -> None:
    lines = list(jsonl_lines)
    if keyed:
        # Keys take the staging-table path of the bulk insert.
        lines = [line.replace('{"task"', f'{{"key": "k{i}", "task"', 1) for i, line in enumerate(lines)]
    lines[position - 1] = bad + "\n"
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    result = sched("add", "--jsonl", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr)
    assert re.match(rf"Error: line {position}: ", result.stderr), result.stderr
    assert _count(dsn) == 0


def test_a_good_file_writes_every_line_once(sched: Callable, dsn: str, tmp_path: Path, jsonl_lines: list[str]) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(jsonl_lines), encoding="utf-8")
    result = sched("add", "--jsonl", str(path))
    assert result.returncode == 0, result.stderr
    ids = [int(line) for line in result.stdout.split()]
    assert len(ids) == len(set(ids)) == LINES
    with db.connect(dsn) as conn:
        rows = conn.rows("SELECT id, payload->>'i', payload->>'s' FROM sched_jobs_all ORDER BY id")
    assert [int(i) for _, i, _ in rows] == list(range(LINES))
    assert [job_id for job_id, _, _ in rows] == sorted(ids)
    assert {s for _, _, s in rows} == {"x'; DROP TABLE sched_jobs; --"}
    # And a second, broken copy of the same file leaves those rows alone.
    path.write_text("".join(jsonl_lines[:-1]) + '{"task": "t", "max_attempts": 0}\n', encoding="utf-8")
    again = sched("add", "--jsonl", str(path))
    assert again.returncode == 2
    assert again.stderr.startswith(f"Error: line {LINES}: ")
    assert _count(dsn) == LINES


def test_non_utf8_input_is_bad_input(sched: Callable, dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"task": "t", "payload": {"s": "caf\xe9"}}\n')
    by_file = sched("add", "--jsonl", str(path))
    assert by_file.returncode == 2
    assert_one_error_line(by_file.stderr)
    payload = subprocess_with_bytes(dsn, ["add", "t", "--payload", "-"], b'{"s": "caf\xe9"}')
    assert payload[0] == 2, payload
    assert_one_error_line(payload[1])
    assert _count(dsn) == 0


def subprocess_with_bytes(dsn: str, argv: list[str], data: bytes) -> tuple[int, str]:
    """Run sched with raw bytes on stdin; return (exit code, stderr)."""
    import subprocess
    import tempfile

    done = subprocess.run(
        [sys.executable, "-m", "pgsched", *argv],
        input=data,
        capture_output=True,
        env={**os.environ, "SCHED_DATABASE_URL": dsn},
        cwd=tempfile.gettempdir(),
        timeout=60,
    )
    return done.returncode, done.stderr.decode("utf-8", "replace")
