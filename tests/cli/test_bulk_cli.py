"""``sched retry``, ``cancel`` and ``purge`` with filters through the real CLI: exit codes and error lines,
nothing written on bad input, the preview, what a run prints, and ``--json``."""

from __future__ import annotations

import json
import subprocess

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


def seed(dsn: str) -> dict[str, int]:
    """Two failed jobs (one timing out), a cancelled one, a succeeded one, a queued one and a running one."""
    ids = {}
    for name, task, state, error in (
        ("timeout", "sync", "failed", "Traceback ...\nTimeoutError: upstream TIMED OUT"),
        ("boom", "mail", "failed", "ValueError: boom"),
        ("cancelled", "mail", "cancelled", "cancelled by request"),
        ("succeeded", "mail", "succeeded", None),
    ):
        (ids[name],) = sql(
            dsn,
            "INSERT INTO sched_jobs (task, state, attempt, finished_at, started_at, worker_id, error)"
            " VALUES (%s, %s, 1, now(), now(), gen_random_uuid(), %s) RETURNING id",
            (task, state, error),
        )[0]
    (ids["queued"],) = sql(dsn, "INSERT INTO sched_jobs (task) VALUES ('mail') RETURNING id")[0]
    (ids["running"],) = sql(
        dsn,
        "INSERT INTO sched_jobs (task, state, attempt, started_at, worker_id, lease)"
        " VALUES ('sync', 'running', 1, now(), gen_random_uuid(), 1) RETURNING id",
    )[0]
    return ids


def table(dsn: str) -> list[tuple]:
    return sql(dsn, "SELECT id, state::text, attempt, cancel_requested_at IS NOT NULL FROM sched_jobs_all ORDER BY id")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry"], "Error: give an ID, or at least one filter: --state, --queue, --task, --error-like, --since,"),
        (["cancel"], "Error: give an ID, or at least one filter"),
        (["purge"], "Error: give at least one filter: --state, --queue, --task, --error-like, --since, --group or"),
        (["purge", "--dry-run"], "Error: give at least one filter"),
        (["retry", "1", "--queue", "default"], "Error: give an ID or filters, not both (sched retry ID, or"),
        (["cancel", "1", "--dry-run"], "Error: give an ID or filters, not both"),
        (["cancel", "1", "--batch-size", "10"], "Error: give an ID or filters, not both"),
        (["retry", "--state", "queued"], "Error: retry cannot act on queued jobs: it acts on failed and cancelled"),
        (["cancel", "--state", "failed"], "Error: cancel cannot act on failed jobs: it acts on waiting, queued and"),
        (["purge", "--state", "running"], "Error: purge cannot act on running jobs: it acts on succeeded, failed"),
        (["purge", "--state", "gone"], "Error: invalid --state 'gone': one of waiting, queued, running,"),
        (["retry", "--since", "soon"], "Error: invalid --since 'soon'"),
        (["purge", "--since", "0s"], "Error: invalid --since '0s': must be more than 0"),
        (["retry", "--queue", "bad queue"], "Error: invalid queue name"),
        (["cancel", "--task", "bad task"], "Error: invalid task name"),
        (["purge", "--error-like", " "], "Error: invalid --error-like: give some text"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(sched, dsn: str, args: list, message: str) -> None:
    seed(dsn)
    before = table(dsn)
    assert one_error(sched(*args), 2).startswith(message)
    assert table(dsn) == before


def test_a_dry_run_prints_the_count_and_a_sample_and_changes_nothing(sched, dsn: str) -> None:
    ids = seed(dsn)
    before = table(dsn)
    done = sched("retry", "--error-like", "timed out", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1 job(s) match; --dry-run: nothing changed (without it: retry them)"
    assert lines[1] == f"{ids['timeout']}  default  sync  failed  Traceback ..."
    assert len(lines) == 2
    shown = json.loads(sched("purge", "--queue", "default", "--dry-run", "--json").stdout)
    assert (shown["action"], shown["dry_run"], shown["matched"]) == ("purge", True, 4)
    assert [s["id"] for s in shown["sample"]] == [ids["succeeded"], ids["cancelled"], ids["boom"], ids["timeout"]]
    assert "changed" not in shown and "deleted" not in shown
    assert table(dsn) == before


def test_a_filter_matching_nothing_is_not_an_error(sched, dsn: str) -> None:
    seed(dsn)
    for command in ("retry", "cancel", "purge"):
        done = sched(command, "--key", "nobody-holds-this", "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert (shown["matched"], shown["changed"]) == (0, 0)
    done = sched("retry", "--task", "nothing")
    assert (done.returncode, done.stdout) == (
        0,
        "retried 0 of 0 matching job(s): 0 queued, 0 waiting on dependencies, 0 refused\n",
    )
    done = sched("purge", "--task", "nothing", "--dry-run")
    assert (done.returncode, done.stdout) == (
        0,
        "0 job(s) match; --dry-run: nothing changed (without it: delete them)\n",
    )


def test_retry_cancel_and_purge_say_what_they_changed_and_a_second_run_changes_nothing(sched, dsn: str) -> None:
    ids = seed(dsn)
    done = sched("retry", "--state", "failed", "--batch-size", "1")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "retried 2 of 2 matching job(s): 2 queued, 0 waiting on dependencies, 0 refused\n"
    assert sql(dsn, "SELECT state::text, attempt FROM sched_jobs_all WHERE id = %s", (ids["boom"],)) == [("queued", 0)]
    again = json.loads(sched("retry", "--state", "failed", "--json").stdout)
    assert (again["matched"], again["changed"], again["queued"]) == (0, 0, [])

    done = sched("cancel", "--queue", "default", "--json")
    shown = json.loads(done.stdout)
    assert (shown["action"], shown["matched"], shown["changed"]) == ("cancel", 4, 4)
    assert (shown["cancelled"], shown["requested"], shown["dependents_cancelled"]) == (3, 1, 0)
    assert sql(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (ids["running"],)) == [("running",)]
    done = sched("cancel", "--queue", "default")
    assert done.stdout == (
        "cancelled 0 of 0 matching job(s) and 0 dependent job(s); asked the workers of 0 running job(s) to stop them\n"
    )

    done = sched("purge", "--state", "cancelled", "--since", "1h")
    assert done.stdout == "deleted 4 of 4 matching job(s) (4 cancelled)\n"
    shown = json.loads(sched("purge", "--state", "cancelled", "--since", "1h", "--json").stdout)
    assert (shown["matched"], shown["changed"], shown["deleted"]) == (
        0,
        0,
        {"succeeded": 0, "failed": 0, "cancelled": 0},
    )
    assert sorted(r[1] for r in table(dsn)) == ["running", "succeeded"]
