"""SQL injection: hostile strings pushed through queue, task, key and payload, by the CLI and the repository, are
stored literally when valid and refused (exit 2) when not; the tables are intact afterwards. And no runtime code
builds SQL text out of values."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pgsched import cli, db, repository
from pgsched.errors import InvalidInput
from pgsched.models import NewJob

ROOT = Path(__file__).resolve().parents[2]

HOSTILE = [
    "'",
    "''",
    "'; DROP TABLE sched_jobs; --",
    "x'); DELETE FROM sched_jobs; --",
    "' OR '1'='1",
    "$$; DROP TABLE sched_jobs; $$",
    "$q$",
    "\\",
    "\\'; DROP TABLE sched_workers; --",
    '"; DROP TABLE "sched_jobs',
    "%s",
    "%(queue)s",
    "{0}",
    "/* */ --",
    "é日本🎉\u202e",
    "line\nbreak\ttab",
    "E'\\x00'",
]
SCHED_TABLES = ["sched_jobs", "sched_job_deps", "sched_workers", "sched_migrations"]


@pytest.fixture
def canary(conn: db.Connection) -> int:
    """A job that must still be there, unchanged, after every attack."""
    return repository.enqueue(conn, NewJob(task="canary", payload_json='{"alive": true}')).id


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


def assert_intact(conn: db.Connection, canary: int) -> None:
    """Every sched table exists and the canary job is untouched."""
    for table in SCHED_TABLES:
        assert conn.row("SELECT to_regclass(%s) IS NOT NULL", [table])[0], table
    assert conn.row("SELECT task, state::text, payload FROM sched_jobs_all WHERE id = %s", [canary]) == (
        "canary",
        "queued",
        {"alive": True},
    )


@pytest.mark.parametrize("text", HOSTILE)
def test_cli_stores_hostile_keys_and_payloads_literally(
    sched: Callable, conn: db.Connection, canary: int, text: str
) -> None:
    payload = {"s": text, text: [text]}
    result = sched("add", "t", "--key", text, "--payload", json.dumps(payload), "--json")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["id"]
    assert conn.row("SELECT dedupe_key, payload FROM sched_jobs_all WHERE id = %s", [job_id]) == (text, payload)
    shown = sched("status", str(job_id), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["payload"] == payload
    assert_intact(conn, canary)


@pytest.mark.parametrize("option", ["--queue", "task"])
def test_cli_refuses_hostile_names(sched: Callable, conn: db.Connection, canary: int, option: str) -> None:
    what = "task" if option == "task" else "queue"
    for number, text in enumerate(HOSTILE):
        args = ["add", "--", text] if option == "task" else ["add", "t", "--queue", text]
        # Every string goes through the CLI's entry point; a few also through a real process.
        if number % 6 == 0:
            done = sched(*args)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        else:
            code, stdout, stderr = run_in_process(args)
        assert code == 2, (text, stderr)
        assert stdout == ""
        assert stderr.startswith(f"Error: invalid {what} name "), stderr
        assert len(stderr.splitlines()) == 1
    assert conn.row("SELECT count(*) FROM sched_jobs_all")[0] == 1
    assert_intact(conn, canary)


def test_cli_status_queue_filter_refuses_hostile_names(conn: db.Connection, canary: int) -> None:
    for text in HOSTILE:
        code, _, stderr = run_in_process(["status", "--queue", text, "--json"])
        assert code == 2, (text, stderr)
        assert stderr.startswith("Error: invalid queue name ")
    assert_intact(conn, canary)


def test_jsonl_with_hostile_values(sched: Callable, conn: db.Connection, canary: int, tmp_path: Path) -> None:
    good = [{"task": "t", "key": text, "payload": {"s": text}} for text in HOSTILE]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good), encoding="utf-8")
    result = sched("add", "--jsonl", str(path))
    assert result.returncode == 0, result.stderr
    ids = [int(i) for i in result.stdout.split()]
    rows = conn.rows("SELECT dedupe_key, payload->>'s' FROM sched_jobs_all WHERE id = ANY(%s) ORDER BY id", [ids])
    assert rows == [(text, text) for text in HOSTILE]
    # NUL cannot be stored in text or jsonb: refused up front with the line named, whatever field carries it.
    for line_no, field in enumerate(['"key": "a\\u0000b"', '"payload": {"s": "\\u0000"}', '"queue": "q\\u0000"'], 1):
        bad = [json.dumps({"task": "t"})] * (line_no - 1) + ['{"task": "t", ' + field + "}"]
        path.write_text("\n".join(bad) + "\n", encoding="utf-8")
        refused = sched("add", "--jsonl", str(path))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith(f"Error: line {line_no}: "), refused.stderr
    assert conn.row("SELECT count(*) FROM sched_jobs_all")[0] == 1 + len(HOSTILE)
    assert_intact(conn, canary)


@pytest.mark.parametrize("text", HOSTILE)
def test_repository_binds_values(conn: db.Connection, canary: int, text: str) -> None:
    payload = json.dumps({"s": text}, ensure_ascii=False)
    single = repository.enqueue(conn, NewJob(task="t", key=text, payload_json=payload))
    bulk = repository.enqueue_many(
        conn,
        [NewJob(task="t", queue="bulk", payload_json=payload), NewJob(task="t", queue="bulk", key=text + "!")],
    )
    for job_id in (single.id, *(b.id for b in bulk)):
        assert repository.get_job(conn, job_id)["task"] == "t"
    assert repository.get_job(conn, single.id)["key"] == text
    assert repository.get_job(conn, bulk[0].id)["payload"] == {"s": text}
    assert repository.count_by_queue(conn, text) == []
    assert_intact(conn, canary)


@pytest.mark.parametrize("text", HOSTILE)
def test_database_constraints_refuse_unvalidated_names(conn: db.Connection, canary: int, text: str) -> None:
    # Even a caller that skips sched's validation cannot store a hostile queue or task name.
    for job in (NewJob(task=text), NewJob(task="t", queue=text)):
        with pytest.raises(InvalidInput):
            repository.enqueue(conn, job)
        with pytest.raises(InvalidInput):
            repository.enqueue_many(conn, [NewJob(task="t"), job])
    assert conn.row("SELECT count(*) FROM sched_jobs_all")[0] == 1
    assert_intact(conn, canary)


# --- no SQL built from values -------------------------------------------------------------------------------

_EXECUTORS = {"execute", "executemany", "rows", "row", "run", "copy", "copy_rows"}
# Identifiers cannot be bound as parameters: these come from constants or generated names, never from input
# (the benchmark is an admin tool that makes and drops its own scratch databases).
_ALLOWED = {
    ("pgsched/db.py", "LISTEN"),
    ("pgsched/embedded.py", "CREATE DATABASE"),
    ("pgsched/bench.py", "CREATE DATABASE"),
    ("pgsched/bench.py", "DROP DATABASE"),
}


def _built_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return not (isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant))
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def test_runtime_code_never_formats_values_into_sql() -> None:
    found = []
    for path in sorted((ROOT / "pgsched").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), filename=relative)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            if node.func.attr in _EXECUTORS and _built_sql(node.args[0]):
                text = ast.get_source_segment(path.read_text(), node.args[0]) or ""
                if not any(relative == file and marker in text for file, marker in _ALLOWED):
                    found.append(f"{relative}:{node.lineno}: {text}")
    assert found == []


def test_the_check_above_can_see_a_formatted_query() -> None:
    sample = ast.parse("conn.rows(f\"SELECT * FROM sched_jobs_all WHERE queue = '{queue}'\")").body[0].value
    assert _built_sql(sample.args[0])
    assert not _built_sql(ast.parse('conn.rows(query("JobGet"), {"id": 1})').body[0].value.args[0])
