"""A job's group (docs/protocol.md, "Queue controls"): stored by every way of adding jobs (one at a time, keyed,
bulk COPY, keyed bulk, the CLI and --jsonl), shown by status, and refused when invalid with nothing written."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgsched.errors import InvalidInput


def groups(dsn: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT task, group_name FROM sched_jobs_all ORDER BY id").fetchall()


def test_every_add_path_stores_the_group(dsn: str) -> None:
    from pgsched import Client

    with Client(dsn) as client:
        client.enqueue("plain", group="tenant:1")
        client.enqueue("keyed", group="tenant:2", key="k")
        client.enqueue("later", group="tenant:3", delay=60)
        client.enqueue("none")
        client.enqueue_many([{"task": "bulk", "group": "tenant:4"}, {"task": "bulk"}])
        client.enqueue_many([{"task": "bulkkey", "group": "tenant:5", "key": "k5"}])
        job = client.get(client.enqueue("shown", group="tenant:6").id)
    assert groups(dsn) == [
        ("plain", "tenant:1"),
        ("keyed", "tenant:2"),
        ("later", "tenant:3"),
        ("none", None),
        ("bulk", "tenant:4"),
        ("bulk", None),
        ("bulkkey", "tenant:5"),
        ("shown", "tenant:6"),
    ]
    assert job["group"] == "tenant:6"


@pytest.mark.parametrize("bad", ["", "g" * 256, "a\x00b", 5, "\ud800"])
def test_a_bad_group_is_refused_before_anything_is_written(dsn: str, bad: object) -> None:
    from pgsched import Client

    with Client(dsn) as client:
        with pytest.raises(InvalidInput, match="invalid group: must be 1-255 characters"):
            client.enqueue("t", group=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="job 2: invalid group"):
            client.enqueue_many([{"task": "t", "group": "ok"}, {"task": "t", "group": bad}])
    assert groups(dsn) == []


def test_the_database_refuses_a_bad_group_too(dsn: str) -> None:
    with psycopg.connect(dsn) as c, pytest.raises(psycopg.errors.CheckViolation):
        c.execute("INSERT INTO sched_jobs (task, group_name) VALUES ('t', '')")


def test_cli_group_option_and_jsonl_field(sched, dsn: str) -> None:
    assert sched("add", "one", "--group", "tenant:42").returncode == 0
    lines = "\n".join(json.dumps(x) for x in [{"task": "a", "group": "g1"}, {"task": "b"}]) + "\n"
    assert sched("add", "--jsonl", "-", "--group", "dflt", input=lines).returncode == 0
    assert groups(dsn) == [("one", "tenant:42"), ("a", "g1"), ("b", "dflt")]
    shown = json.loads(sched("status", str(1), "--json").stdout)
    assert shown["group"] == "tenant:42"


def test_cli_bad_group_exits_2_and_writes_nothing(sched, dsn: str) -> None:
    result = sched("add", "t", "--group", "g" * 256)
    assert (result.returncode, result.stdout) == (2, "")
    assert "invalid group: must be 1-255 characters" in result.stderr
    lines = json.dumps({"task": "a", "group": "ok"}) + "\n" + json.dumps({"task": "b", "group": ""}) + "\n"
    result = sched("add", "--jsonl", "-", input=lines)
    assert result.returncode == 2
    assert "line 2: invalid group: must be 1-255 characters" in result.stderr
    result = sched("add", "--jsonl", "-", input=json.dumps({"task": "a", "group": 7}) + "\n")
    assert (result.returncode, "line 1: invalid group: must be 1-255" in result.stderr) == (2, True)
    assert groups(dsn) == []
