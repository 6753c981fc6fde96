"""The Python API against a real PostgreSQL: enqueue inside the caller's transaction (a rollback leaves no job
and sends no wake-up), dedupe, bulk, validation, the lazy import, and reading, cancelling and retrying jobs."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pgsched import repository
from pgsched.errors import InvalidInput, NotFound, WrongState


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM sched_jobs_all").fetchone()[0]  # type: ignore[index]


def wakeups(listener: psycopg.Connection) -> list[str]:
    return [n.payload.split()[0] for n in listener.notifies(timeout=0.5)]


def test_import_pgsched_stays_cheap_and_client_loads_on_first_use() -> None:
    code = (
        "import sys, pgsched; assert 'pgsched.client' not in sys.modules and 'psycopg' not in sys.modules; "
        "from pgsched import Client, Enqueued; assert Client.__module__ == 'pgsched.client'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_rolled_back_transaction_leaves_no_job_and_sends_no_wakeup(dsn: str) -> None:
    from pgsched import Client

    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as app:
        listener.execute(f'LISTEN "{repository.wakeup_channel()}"')
        client = Client(conn=app)
        with pytest.raises(RuntimeError), app.transaction():
            app.execute("CREATE TEMP TABLE orders (id int)")
            client.enqueue("send_receipt", {"order": 1})
            raise RuntimeError("the order failed")
        assert count(dsn) == 0
        assert wakeups(listener) == []
        with app.transaction():
            job = client.enqueue("send_receipt", {"order": 2}, queue="mail")
            assert count(dsn) == 0  # not visible before the caller commits
        assert count(dsn) == 1
        assert wakeups(listener) == ["mail"]
    assert job.id > 0 and not job.deduplicated


def test_a_non_autocommit_connection_keeps_the_job_in_its_implicit_transaction(dsn: str) -> None:
    from pgsched import Client

    with psycopg.connect(dsn) as app:
        client = Client(conn=app)
        client.enqueue("t")
        client.enqueue_many([{"task": "t"}, {"task": "t", "key": "k"}])
        app.rollback()
        assert count(dsn) == 0
        client.enqueue("t")
        app.commit()
    assert count(dsn) == 1


def test_own_connection_dedupe_bulk_and_dependencies(dsn: str) -> None:
    from pgsched import Client

    with Client(dsn) as client:
        first = client.enqueue("t", {"n": 1}, key="report:2024", priority=5, timeout="2m", max_attempts=7)
        again = client.enqueue("t", {"n": 2}, key="report:2024")
        assert again.id == first.id and again.deduplicated
        later = client.enqueue("t", delay=timedelta(hours=1), after=[first.id])
        at = client.enqueue("t", run_at=datetime.now(UTC) + timedelta(days=200))
        many = client.enqueue_many([{"task": "a"}, {"task": "b", "payload": {"x": 1}, "key": "report:2024"}])
        assert many[1].id == first.id and many[1].deduplicated
        chained = client.enqueue_many([{"task": "c", "after": [first.id]}])
    with psycopg.connect(dsn) as c:
        rows = dict(c.execute("SELECT id, state::text FROM sched_jobs_all").fetchall())
        attempts, timeout = c.execute(
            "SELECT max_attempts, extract(epoch FROM timeout) FROM sched_jobs_all WHERE id = %s", (first.id,)
        ).fetchone()  # type: ignore[misc]
    assert rows[later.id] == "waiting" and rows[chained[0].id] == "waiting" and rows[at.id] == "queued"
    assert (attempts, float(timeout)) == (7, 120.0)
    assert len(rows) == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("bad task!",), {}, "invalid task name"),
        (("t", [1]), {}, "payload must be a JSON object"),
        (("t",), {"queue": ""}, "invalid queue name"),
        (("t",), {"delay": "soon"}, "invalid delay"),
        (("t",), {"delay": 1, "run_at": datetime.now(UTC)}, "delay or run_at"),
        (("t",), {"run_at": datetime(2030, 1, 1)}, "timezone-aware"),
        (("t",), {"after": [0]}, "after 0: no such job"),
        (("t",), {"after": [12345]}, "no such job"),
    ],
)
def test_invalid_arguments_raise_invalid_input_and_add_nothing(
    dsn: str, args: tuple, kwargs: dict, message: str
) -> None:
    from pgsched import Client

    with Client(dsn) as client, pytest.raises(InvalidInput, match=message):
        client.enqueue(*args, **kwargs)
    with Client(dsn) as client, pytest.raises(InvalidInput, match="job 2: unknown field 'tsk'"):
        client.enqueue_many([{"task": "t"}, {"tsk": "t"}])
    assert count(dsn) == 0


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"task": "t", "priority": True}, "job 2: invalid priority True"),
        ({"task": "t", "priority": 1.0}, "job 2: invalid priority 1.0"),
        ({"task": "t", "priority": 1, "payload": [1]}, "job 2: payload must be a JSON object"),
        ({"task": "t", "priority": 1, "after": (True,)}, "job 2: after must hold job ids"),
    ],
)
def test_bulk_checks_every_job_even_when_it_looks_like_the_one_before(dsn: str, second: dict, message: str) -> None:
    # enqueue_many checks each shape of arguments once; a value equal to an accepted one but of another type
    # (True == 1 == 1.0) is still a new shape, and every payload is checked on its own.
    from pgsched import Client

    with Client(dsn) as client, pytest.raises(InvalidInput, match=message):
        client.enqueue_many(
            [{"task": "t", "priority": 1, "after": ()}, second]
            if "after" in second
            else [
                {"task": "t", "priority": 1},
                second,
            ]
        )
    assert count(dsn) == 0


def test_bulk_keeps_each_jobs_payload_and_options(dsn: str) -> None:
    from pgsched import Client

    specs = [{"task": "t", "queue": "q", "payload": {"n": n}} for n in range(3000)]
    specs += [{"task": "t", "queue": f"q{n}", "priority": n % 7} for n in range(1500)]  # more shapes than kept
    specs += [{"task": "u", "key": f"k{n}", "payload": {"n": n}} for n in range(10)]
    with Client(dsn) as client:
        added = client.enqueue_many(specs)
    assert len(added) == len(specs) and not any(a.deduplicated for a in added)
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT id, task, queue, priority, payload, dedupe_key FROM sched_jobs_all ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [a.id for a in added]
    assert [r[4] for r in rows[:3000]] == [{"n": n} for n in range(3000)]
    assert {r[2] for r in rows[:3000]} == {"q"}
    assert [(r[2], r[3]) for r in rows[3000:4500]] == [(f"q{n}", n % 7) for n in range(1500)]
    assert [(r[1], r[4], r[5]) for r in rows[4500:]] == [("u", {"n": n}, f"k{n}") for n in range(10)]


def test_a_producer_reads_cancels_and_retries_its_jobs(dsn: str) -> None:
    from pgsched import Client

    with Client(dsn) as client:
        parent = client.enqueue("t", {"n": 1}).id
        child = client.enqueue("t", after=[parent]).id
        shown = client.get(parent)
        assert (shown["id"], shown["state"], shown["attempt"], shown["payload"]) == (parent, "queued", 0, {"n": 1})
        assert client.get(child)["depends_on"] == [parent]
        # A cancel takes the dependents along; a retry revives the job, its dependent waits again once retried.
        assert client.cancel(parent) == "cancelled"
        assert (client.get(parent)["state"], client.get(child)["state"]) == ("cancelled", "cancelled")
        assert client.retry(parent) == "queued"
        assert client.retry(child) == "waiting"
        with pytest.raises(
            WrongState, match=rf"^job {parent} is queued; only failed or cancelled jobs can be retried$"
        ):
            client.retry(parent)
        for call in (client.get, client.cancel, client.retry):
            with pytest.raises(NotFound, match=r"^job 999999 not found$"):
                call(999_999)
            with pytest.raises(InvalidInput, match=r"^invalid job id 0: a positive integer$"):
                call(0)


def test_a_cancel_on_the_callers_connection_commits_or_rolls_back_with_it(dsn: str) -> None:
    from pgsched import Client

    with Client(dsn) as own:
        job_id = own.enqueue("t").id
        with psycopg.connect(dsn) as app:
            client = Client(conn=app)
            assert client.cancel(job_id) == "cancelled"
            assert own.get(job_id)["state"] == "queued"  # not committed yet
            app.rollback()
            assert own.get(job_id)["state"] == "queued"
            assert client.cancel(job_id) == "cancelled"
            app.commit()
        assert own.get(job_id)["state"] == "cancelled"
