"""The CLI contract beyond `add`: migrate, status shapes, reap, cleanup, errors without secrets, help text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid

import pytest
import typer
import typer.main
from typer.core import TyperGroup, TyperOption

from pgsched import db
from pgsched.cli import app

QUEUE_KEYS = {
    "queue", "waiting", "queued", "scheduled", "running", "succeeded", "failed", "cancelled", "oldest_ready_age_s",
}  # fmt: skip
WORKER_KEYS = {"id", "host", "pid", "queues", "concurrency", "running", "heartbeat_age_s"}
JOB_KEYS = (
    "id queue task group state attempt max_attempts priority run_at created_at started_at finished_at payload result "
    "error progress depends_on trace_context why"
).split()


def test_migrate_then_check(sched, empty_dsn: str) -> None:
    env = {"SCHED_DATABASE_URL": empty_dsn}
    assert sched("migrate", env=env).returncode == 0
    assert sched("migrate", "--check", env=env).returncode == 0


def test_status_json_shape(sched, conn: db.Connection) -> None:
    sched("add", "t", "--queue", "q1")
    sched("add", "t", "--queue", "q1", "--delay", "1h")
    sched("add", "t", "--queue", "q2")
    conn.run(
        "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency) VALUES (%s, 'h1', 42, %s, %s, 4)",
        (str(uuid.uuid4()), ["q1", "q2"], ["t"]),
    )
    done = sched("status", "--json")
    assert (done.returncode, done.stderr) == (0, "")
    out = json.loads(done.stdout)
    assert set(out) == {"queues", "workers"}
    assert [q["queue"] for q in out["queues"]] == ["q1", "q2"]
    for queue in out["queues"]:
        assert set(queue) == QUEUE_KEYS
    assert (out["queues"][0]["queued"], out["queues"][0]["scheduled"], out["queues"][1]["queued"]) == (1, 1, 1)
    (worker,) = out["workers"]
    assert set(worker) == WORKER_KEYS
    assert (worker["host"], worker["pid"], worker["queues"], worker["concurrency"]) == ("h1", 42, ["q1", "q2"], 4)

    only = json.loads(sched("status", "--json", "--queue", "q2").stdout)
    assert [q["queue"] for q in only["queues"]] == ["q2"]


def test_status_of_one_job(sched) -> None:
    parent = int(sched("add", "t").stdout)
    child = int(sched("add", "t", "--after", str(parent), "--payload", '{"a": 1}').stdout)
    done = sched("status", str(child), "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert list(job) == JOB_KEYS
    assert (job["id"], job["state"], job["payload"], job["depends_on"]) == (child, "waiting", {"a": 1}, [parent])
    assert job["created_at"].endswith("+00:00") or "T" in job["created_at"]
    # The plain rendering works too.
    assert sched("status", str(child)).returncode == 0


def test_status_shows_the_trace_context_a_job_was_added_in(sched) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = sched("add", "t", env={"TRACEPARENT": traceparent, "TRACESTATE": "vendor=opaque"}).stdout.strip()
    plain = sched("add", "t").stdout.strip()
    shown = json.loads(sched("status", traced, "--json").stdout)
    assert shown["trace_context"] == {"traceparent": traceparent, "tracestate": "vendor=opaque"}
    assert json.loads(sched("status", plain, "--json").stdout)["trace_context"] is None
    # The plain view names the trace on a line of its own, and has no such line for a job outside a trace.
    lines = sched("status", traced).stdout.splitlines()
    assert [line.split() for line in lines if line.startswith("trace")] == [["trace", traceparent]]
    assert not [line for line in sched("status", plain).stdout.splitlines() if line.startswith("trace")]


def test_status_of_a_missing_job(sched) -> None:
    done = sched("status", "424242", "--json")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "Error: job 424242 not found\n")


def test_status_bad_queue(sched) -> None:
    done = sched("status", "--queue", "no way")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "Error: invalid queue name 'no way': use 1-64 letters, digits or _ . : -\n"


def test_reap_json(sched, conn: db.Connection) -> None:
    job_id = int(sched("add", "t").stdout)
    conn.run(
        "UPDATE sched_jobs SET state = 'running', attempt = 1, worker_id = %s, started_at = now() WHERE id = %s",
        (str(uuid.uuid4()), job_id),
    )
    done = sched("reap", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"requeued": [job_id], "failed": [], "workers_removed": 0}
    plain = sched("reap")
    assert (plain.returncode, plain.stdout) == (0, "requeued 0, failed 0, removed 0 dead worker(s)\n")


def test_cleanup_dry_run_and_json(sched, conn: db.Connection) -> None:
    conn.run(
        "INSERT INTO sched_jobs (task, state, finished_at) VALUES "
        "('t', 'succeeded', now() - interval '8 days'), ('t', 'failed', now() - interval '9 days'), "
        "('t', 'cancelled', now() - interval '1 day'), ('t', 'queued', NULL)"
    )
    dry = sched("cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["would_delete"], report["deleted"]) == (True, 2, 0)
    assert (report["succeeded"], report["failed"], report["cancelled"]) == (1, 1, 0)
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (4,)

    real = json.loads(sched("cleanup", "--json", "--older-than", "12h", "--batch-size", "1").stdout)
    assert (real["dry_run"], real["deleted"], real["would_delete"]) == (False, 3, 0)
    assert (real["succeeded"], real["failed"], real["cancelled"]) == (1, 1, 1)
    assert conn.rows("SELECT state::text FROM sched_jobs_all") == [("queued",)]
    plain = sched("cleanup", "--dry-run")
    assert plain.returncode == 0 and plain.stdout.startswith("would delete 0 job(s): 0 succeeded, 0 failed")


def test_cleanup_bad_duration(sched) -> None:
    done = sched("cleanup", "--older-than", "a while")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("Error: invalid ") and "'a while'" in done.stderr
    assert len(done.stderr.splitlines()) == 1


UNREACHABLE = "postgresql://u:s3cretpw@127.0.0.1:1/x"


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["migrate", "--check"],
        ["add", "t"],
        ["add", "t", "--jsonl", "-"],
        ["status", "--json"],
        ["status", "1"],
        ["reap", "--json"],
        ["cleanup", "--dry-run"],
        ["--debug", "status"],
    ],
    ids=" ".join,
)
def test_unreachable_database(args: list[str]) -> None:
    env = {**os.environ, "SCHED_DATABASE_URL": UNREACHABLE}
    done = subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        input='{"payload": {}}\n',
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "s3cretpw" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        'Error: cannot reach the database: connection failed: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused (check SCHED_DATABASE_URL)"
    ]
    if "--debug" not in args:
        assert done.stderr == errors[0] + "\n"
        assert "Traceback" not in done.stderr


def _commands(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append(((*prefix, name), command))
        if isinstance(command, TyperGroup):
            found.extend(_commands(command, (*prefix, name)))
    return found


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_the_contract_commands_exist() -> None:
    names = {path for path, _ in COMMANDS}
    assert {("migrate",), ("add",), ("status",), ("worker",), ("reap",), ("cleanup",)} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: typer.core.TyperCommand) -> None:
    assert (command.help or "").strip(), f"sched {' '.join(path)} has no docstring"
    for param in command.params:
        if isinstance(param, TyperOption) and param.name not in ("help",):
            assert (param.help or "").strip(), f"sched {' '.join(path)} {param.opts[0]} has no help"
    done = subprocess.run(
        [sys.executable, "-m", "pgsched", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
        env={k: v for k, v in os.environ.items() if k != "SCHED_DATABASE_URL"},
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "Usage:" in done.stdout and command.help.strip().splitlines()[0][:40] in " ".join(done.stdout.split())


def test_root_help_and_version() -> None:
    for args in (["--help"], ["--version"]):
        done = subprocess.run([sys.executable, "-m", "pgsched", *args], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, ""), args
        assert done.stdout.strip()


@pytest.mark.parametrize("command", ["status", "cancel", "retry"])
def test_an_id_beyond_any_job_is_not_found(sched, command: str) -> None:
    done = sched(command, "99999999999999999999")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "Error: job 99999999999999999999 not found\n")


def test_cleanup_of_everything_blames_the_option(sched, conn: db.Connection) -> None:
    conn.run("INSERT INTO sched_jobs (task, state, finished_at) VALUES ('t', 'succeeded', now())")
    done = sched("cleanup", "--older-than", "0s")
    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        "Error: invalid --older-than '0s': must be more than 0\n",
    )
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (1,)


def test_why_names_the_error_in_one_line_and_the_error_keeps_the_traceback(sched, conn: db.Connection) -> None:
    error = (
        'ValueError: boom\nTraceback (most recent call last):\n  File "app.py", line 3, in handler\nValueError: boom'
    )
    (job_id,) = conn.row(
        "INSERT INTO sched_jobs (task, state, attempt, max_attempts, error, finished_at) "
        "VALUES ('t', 'failed', 1, 1, %s, now()) RETURNING id",
        (error,),
    )  # type: ignore[misc]
    job = json.loads(sched("status", str(job_id), "--json").stdout)
    assert job["why"] == "attempts exhausted (1 of 1); last error: ValueError: boom"
    assert job["error"] == error
    shown = sched("status", str(job_id))
    assert shown.returncode == 0 and shown.stdout.count("Traceback") == 1


def test_reap_takes_no_threshold(sched) -> None:
    done = sched("reap", "--stale-after", "1s")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "Error: No such option: --stale-after\n")
