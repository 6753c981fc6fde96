"""`sched add` happy paths: ids on stdout, fields stored as given, hostile-looking strings stored as data."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pgsched import db, repository


def test_add_prints_an_integer_id(sched, conn: db.Connection) -> None:
    done = sched("add", "sched.sleep", "--payload", '{"seconds": 1}', "--queue", "q1")
    assert (done.returncode, done.stderr) == (0, "")
    assert re.fullmatch(r"\d+\n", done.stdout)
    job = repository.get_job(conn, int(done.stdout))
    assert (job["task"], job["queue"], job["payload"], job["state"]) == ("sched.sleep", "q1", {"seconds": 1}, "queued")


def test_add_stores_every_option(sched, conn: db.Connection) -> None:
    first = int(sched("add", "t").stdout)
    done = sched(
        "add", "t", "--priority", "-7", "--delay", "1h30m", "--max-attempts", "9", "--timeout", "90s",
        "--key", "k1", "--after", str(first), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {"id": out["id"], "deduplicated": False}
    job = repository.get_job(conn, out["id"])
    assert (job["priority"], job["max_attempts"], job["timeout_s"], job["key"]) == (-7, 9, 90.0, "k1")
    assert (job["state"], job["depends_on"]) == ("waiting", [first])
    assert (job["run_at"] - job["created_at"]).total_seconds() == 5400


def test_add_with_a_live_key_returns_the_same_id(sched) -> None:
    first = sched("add", "t", "--key", "once")
    second = sched("add", "t", "--key", "once", "--json")
    assert json.loads(second.stdout) == {"id": int(first.stdout), "deduplicated": True}


def test_add_at_a_time(sched, conn: db.Connection) -> None:
    # Within a year from now: a job may be put off that far, by --delay or by --at.
    at = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0).isoformat()
    done = sched("add", "t", "--at", at)
    assert repository.get_job(conn, int(done.stdout))["run_at"].isoformat() == at


def test_payload_from_file_and_stdin(sched, conn: db.Connection, tmp_path: Path) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file"}')
    from_file = sched("add", "t", "--payload", str(path))
    from_stdin = sched("add", "t", "--payload", "-", input='{"from": "stdin"}')
    assert repository.get_job(conn, int(from_file.stdout))["payload"] == {"from": "file"}
    assert repository.get_job(conn, int(from_stdin.stdout))["payload"] == {"from": "stdin"}


def test_jsonl_adds_one_job_per_line_in_order(sched, conn: db.Connection) -> None:
    lines = "".join(json.dumps({"payload": {"n": n}, "key": f"k{n % 3}"}) + "\n" for n in range(6))
    done = sched("add", "t", "--jsonl", "-", "--queue", "bulk", input=lines)
    assert done.returncode == 0, done.stderr
    ids = [int(line) for line in done.stdout.splitlines()]
    assert len(ids) == 6 and ids[3:] == ids[:3]
    stored = conn.rows("SELECT payload, dedupe_key, queue FROM sched_jobs_all ORDER BY id")
    assert stored == [({"n": n}, f"k{n}", "bulk") for n in range(3)]


def test_strings_that_look_like_sql_are_stored_literally(sched, conn: db.Connection) -> None:
    key = "'); DROP TABLE sched_jobs; --"
    payload = {"q": "1; DELETE FROM sched_jobs WHERE true; --", "n": "$$; TRUNCATE sched_workers; $$"}
    done = sched("add", "report:v1", "--queue", "x-1.y:z", "--key", key, "--payload", json.dumps(payload))
    assert done.returncode == 0, done.stderr
    job = repository.get_job(conn, int(done.stdout))
    assert (job["task"], job["queue"], job["key"], job["payload"]) == ("report:v1", "x-1.y:z", key, payload)
    assert conn.row("SELECT count(*) FROM sched_jobs_all") == (1,)
    assert conn.row("SELECT to_regclass('sched_workers') IS NOT NULL") == (True,)
