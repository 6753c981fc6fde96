"""The workflow commands through the real CLI: unique keys under concurrent processes, schedules, queue
controls, cancel, retry, and status with result, progress and why. Exit codes and error lines are pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import psycopg
import pytest


def one_error(result: subprocess.CompletedProcess, code: int) -> str:
    """Assert ``result`` failed with ``code``, wrote one ``Error:`` line and no data; return the line."""
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def sql(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(statement, params)
        return cur.fetchall() if cur.description else []


# --- unique jobs -----------------------------------------------------------------------------------------


def test_ten_concurrent_processes_adding_one_key_make_exactly_one_job(dsn: str) -> None:
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgsched", "add", "report", "--key", "daily:2024-06-01", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        for _ in range(10)
    ]
    outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o["id"] for o in outputs}) == 1
    assert sorted(o["deduplicated"] for o in outputs) == [False] + [True] * 9
    assert sql(dsn, "SELECT count(*) FROM sched_jobs_all") == [(1,)]


def test_a_duplicate_key_prints_the_live_job_and_jsonl_lines_honour_keys(sched) -> None:
    first = sched("add", "t", "--key", "k")
    again = sched("add", "t", "--key", "k")
    assert first.returncode == again.returncode == 0 and first.stdout == again.stdout
    other_queue = sched("add", "t", "--key", "k", "--queue", "other")
    assert other_queue.stdout != first.stdout
    lines = '{"key": "k"}\n{"key": "x"}\n{"key": "x"}\n'
    bulk = sched("add", "t", "--jsonl", "-", "--json", input=lines)
    records = [json.loads(line) for line in bulk.stdout.splitlines()]
    assert records[0] == {"id": int(first.stdout), "deduplicated": True}
    assert records[1]["deduplicated"] is False and records[2] == {"id": records[1]["id"], "deduplicated": True}


# --- schedules -------------------------------------------------------------------------------------------


def test_schedule_add_list_remove(sched) -> None:
    added = sched(
        "schedule", "add", "nightly", "--cron", "30 2 * * *", "backup", "--payload", '{"db": "main"}',
        "--queue", "ops", "--tz", "Europe/Paris", "--catch-up", "none", "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    record = json.loads(added.stdout)
    assert record["created"] is True and record["next_run_at"]
    listed = json.loads(sched("schedule", "list", "--json").stdout)
    assert [(s["name"], s["cron"], s["tz"], s["task"], s["queue"], s["payload"], s["catch_up"]) for s in listed] == [
        ("nightly", "30 2 * * *", "Europe/Paris", "backup", "ops", {"db": "main"}, "none")
    ]
    assert "nightly" in sched("schedule", "list").stdout
    assert sched("schedule", "remove", "nightly").returncode == 0
    assert json.loads(sched("schedule", "list", "--json").stdout) == []
    assert one_error(sched("schedule", "remove", "nightly"), 1) == "Error: schedule nightly not found"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nightly", "--cron", "61 * * * *", "t"], "Error: invalid cron expression '61 * * * *'"),
        (["nightly", "--cron", "* * *", "t"], "Error: invalid cron expression '* * *'"),
        (["nightly", "--cron", "@hourly", "t", "--tz", "Mars/Olympus"], "Error: unknown time zone 'Mars/Olympus'"),
        (["bad name", "--cron", "@hourly", "t"], "Error: invalid schedule name 'bad name'"),
        (["nightly", "--cron", "@hourly", "bad task"], "Error: invalid task name 'bad task'"),
        (["nightly", "--cron", "@hourly", "t", "--catch-up", "some"], "Error: invalid catch-up 'some'"),
    ],
)
def test_bad_schedules_are_refused_with_exit_2_and_nothing_written(sched, dsn: str, args: list, message: str) -> None:
    assert one_error(sched("schedule", "add", *args), 2).startswith(message)
    assert sql(dsn, "SELECT count(*) FROM sched_schedules") == [(0,)]


# --- queue controls --------------------------------------------------------------------------------------


def test_queue_pause_resume_limit_and_list(sched) -> None:
    assert sched("queue", "pause", "mail").returncode == 0
    assert sched("queue", "limit", "mail", "--rate", "100/s", "--burst", "20", "--max-backlog", "5").returncode == 0
    (mail,) = json.loads(sched("queue", "list", "--json").stdout)
    assert (mail["queue"], mail["paused"], mail["rate"], mail["burst"], mail["max_backlog"]) == (
        "mail", True, 100.0, 20.0, 5
    )  # fmt: skip
    assert "mail" in sched("queue", "list").stdout
    assert sched("queue", "limit", "mail", "--rate", "none").returncode == 0
    assert sched("queue", "resume", "mail").returncode == 0
    (mail,) = json.loads(sched("queue", "list", "--json").stdout)
    assert (mail["paused"], mail["rate"], mail["max_backlog"]) == (False, None, 5)
    assert sched("queue", "limit", "mail", "--clear").returncode == 0
    assert json.loads(sched("queue", "list", "--json").stdout) == []


def test_group_rates_and_fair_sharing_through_the_cli(sched) -> None:
    assert sched("queue", "limit", "sync", "--group-rate", "30/m", "--group-burst", "3", "--no-fair").returncode == 0
    (sync,) = json.loads(sched("queue", "list", "--json").stdout)
    assert (sync["group_rate"], sync["group_burst"], sync["fair"], sync["group_buckets"]) == (0.5, 3.0, False, 0)
    # Without --group-burst: one second's worth, at least one token.
    assert sched("queue", "limit", "sync", "--group-rate", "10/s").returncode == 0
    (sync,) = json.loads(sched("queue", "list", "--json").stdout)
    assert (sync["group_rate"], sync["group_burst"], sync["fair"]) == (10.0, 10.0, False)
    assert sched("queue", "limit", "sync", "--group-rate", "0", "--fair").returncode == 0
    assert json.loads(sched("queue", "list", "--json").stdout) == []


def test_a_full_queue_refuses_adds_with_the_exact_error(sched, dsn: str) -> None:
    sched("queue", "limit", "q", "--max-backlog", "2")
    assert sched("add", "t", "-Q", "q").returncode == sched("add", "t", "-Q", "q").returncode == 0
    assert one_error(sched("add", "t", "-Q", "q"), 1) == "Error: queue q is full (2 jobs)"
    assert sql(dsn, "SELECT count(*) FROM sched_jobs_all") == [(2,)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["q", "--rate", "fast"], "Error: invalid rate 'fast'"),
        (["q", "--rate", "0/s"], "Error: invalid rate '0/s'"),
        (
            ["q"],
            "Error: give --rate, --max-backlog, --max-running, --group-concurrency, --group-rate, --fair/--no-fair",
        ),
        (["q", "--clear", "--rate", "1/s"], "Error: --clear cannot be combined"),
        (["q", "--burst", "5"], "Error: --burst needs --rate"),
        (["bad queue!", "--rate", "1/s"], "Error: invalid queue name"),
        (["q", "--group-rate", "fast"], "Error: --group-rate: invalid rate 'fast'"),
        (["q", "--group-rate", "-2/s"], "Error: --group-rate: invalid rate '-2/s'"),
        (["q", "--group-burst", "5"], "Error: --group-burst needs --group-rate"),
        (["q", "--group-rate", "0", "--group-burst", "5"], "Error: --group-burst needs --group-rate"),
        (["q", "--group-rate", "5/s", "--group-burst", "0"], "Error: invalid --group-burst 0"),
        (["q", "--clear", "--no-fair"], "Error: --clear cannot be combined"),
    ],
)
def test_bad_queue_limits_exit_2(sched, dsn: str, args: list, message: str) -> None:
    assert one_error(sched("queue", "limit", *args), 2).startswith(message)
    assert sql(dsn, "SELECT count(*) FROM sched_queues") == [(0,)]


# --- cancel and retry ------------------------------------------------------------------------------------


def test_cancel_and_retry_through_the_cli(sched, dsn: str) -> None:
    parent = sched("add", "t").stdout.strip()
    child = sched("add", "t", "--after", parent).stdout.strip()
    cancelled = sched("cancel", parent, "--json")
    assert json.loads(cancelled.stdout) == {
        "id": int(parent), "state": "cancelled", "cancel_requested": False, "dependents_cancelled": 1
    }  # fmt: skip
    assert one_error(sched("cancel", parent), 1) == f"Error: job {parent} already cancelled; nothing to cancel"
    assert one_error(sched("cancel", "424242"), 1) == "Error: job 424242 not found"
    refused = one_error(sched("retry", child), 1)
    assert refused == f"Error: job {child} depends on job {parent}, which cancelled; retry that one first"
    retried = sched("retry", "--cancelled", "--queue", "default", "--json")
    shown = json.loads(retried.stdout)
    assert (shown["queued"], shown["waiting"], shown["refused"]) == ([int(parent)], [int(child)], [])
    assert one_error(sched("retry", parent), 1).endswith("only failed or cancelled jobs can be retried")
    assert sql(dsn, "SELECT state::text, attempt FROM sched_jobs_all ORDER BY id") == [("queued", 0), ("waiting", 0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error: give an ID, or at least one filter: --state, --queue, --task"),
        (["1", "--failed"], "Error: give an ID or filters, not both"),
        (["--failed", "--queue", "bad queue"], "Error: invalid queue name"),
    ],
)
def test_bad_retry_usage_exits_2(sched, args: list, message: str) -> None:
    assert one_error(sched("retry", *args), 2).startswith(message)


# --- status ----------------------------------------------------------------------------------------------


def test_status_shows_result_progress_and_why(sched, dsn: str) -> None:
    job_id = int(sched("add", "t", "--delay", "1h").stdout)
    shown = json.loads(sched("status", str(job_id), "--json").stdout)
    assert shown["why"].startswith("scheduled for later: runs at ")
    sql(
        dsn,
        "UPDATE sched_jobs SET state = 'succeeded', finished_at = now(), started_at = now(),"
        " worker_id = gen_random_uuid(), result = %s, progress = %s WHERE id = %s",
        ('{"rows": 42}', '{"done": 10, "total": 10}', job_id),
    )
    shown = json.loads(sched("status", str(job_id), "--json").stdout)
    assert (shown["result"], shown["progress"], shown["why"]) == ({"rows": 42}, {"done": 10, "total": 10}, None)
    table = sched("status", str(job_id)).stdout
    assert '{"rows": 42}' in table and '"total": 10' in table


def test_every_workflow_command_has_help(sched) -> None:
    for args in (
        ["cancel"], ["retry"], ["schedule"], ["schedule", "add"], ["schedule", "list"], ["schedule", "remove"],
        ["queue"], ["queue", "pause"], ["queue", "resume"], ["queue", "limit"], ["queue", "list"],
    ):  # fmt: skip
        result = sched(*args, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout, args
        assert len(result.stdout.strip().splitlines()) > 3
