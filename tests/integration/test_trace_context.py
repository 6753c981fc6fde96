"""The trace context a job records when it is added (README, "Tracing"): every way of adding a job stores the
caller's context inside a trace and nothing outside one; ``sched add`` stores a valid TRACEPARENT; the claim
hands the context to the worker, from limited queues too; and a producer that does not trace never imports
opentelemetry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pgsched import db, repository, tracing
from pgsched.client import Client, enqueue_jobs
from pgsched.models import NewJob
from pgsched.repository import runs

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@contextmanager
def _in_span() -> Iterator[None]:
    """A current span, with the API alone (no SDK): what an instrumented caller's code would be inside."""
    trace = pytest.importorskip("opentelemetry.trace")
    context = trace.SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=trace.TraceFlags(1))
    with trace.use_span(trace.NonRecordingSpan(context)):
        yield


def _contexts(conn) -> list:
    return [row[0] for row in conn.rows("SELECT trace_context FROM sched_jobs_all ORDER BY id")]


def _add_every_way(dsn: str, conn) -> None:
    """One job through each insert path: the plain add of a job due now, an add with a key and a delay, an add
    with a dependency (the locked path), an add to a capped queue, a plain COPY, a COPY with options, and a keyed
    COPY (staged)."""
    with Client(dsn) as client:
        parent = client.enqueue("t").id
        client.enqueue("t", key="k1", delay=60, group="g")
        client.enqueue("t", after=[parent])
        client.enqueue("t", queue="capped")
        client.enqueue_many([{"task": "t"}, {"task": "t"}])
        client.enqueue_many([{"task": "t", "priority": 5}, {"task": "t", "delay": 30}])
        client.enqueue_many([{"task": "t", "key": "k2"}, {"task": "t", "key": "k3"}])


def test_every_way_of_adding_a_job_records_the_callers_trace_context(dsn, conn) -> None:
    repository.set_queue_max_backlog(conn, "capped", 10)
    with _in_span():
        _add_every_way(dsn, conn)
    assert _contexts(conn) == [{"traceparent": TRACEPARENT}] * 10


def test_outside_a_trace_no_job_records_a_context(dsn, conn) -> None:
    pytest.importorskip("opentelemetry.trace")  # imported: the look-up for a current span happens and finds none
    repository.set_queue_max_backlog(conn, "capped", 10)
    _add_every_way(dsn, conn)
    assert _contexts(conn) == [None] * 10


def test_a_job_keeps_its_own_context_and_repository_paths_take_a_mixed_batch(conn) -> None:
    other = json.dumps({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00"})
    jobs = [NewJob(task="t"), NewJob(task="t", trace_context=other), NewJob(task="t", key="x", trace_context=other)]
    repository.enqueue_many(conn, jobs[:2])
    repository.enqueue_many(conn, jobs[2:])
    assert _contexts(conn) == [None, json.loads(other), json.loads(other)]


def test_the_claim_hands_the_context_to_the_worker_from_limited_queues_too(dsn, conn) -> None:
    context = json.dumps({"traceparent": TRACEPARENT})
    repository.set_queue_concurrency(conn, "limited", max_running=5)
    repository.enqueue_many(conn, [NewJob(task="t", trace_context=context), NewJob(task="t")])
    repository.enqueue_many(conn, [NewJob(task="t", queue="limited", trace_context=context)])
    worker_id = "00000000-0000-0000-0000-000000000001"

    async def claim(queue: str) -> list:
        aconn = await db.connect_async(dsn)
        try:
            return await runs.claim_jobs(aconn, worker_id, queue, ["t"], 10)
        finally:
            await aconn.close()

    plain = asyncio.run(claim("default"))
    assert [job.trace_context for job in plain] == [{"traceparent": TRACEPARENT}, None]
    [limited] = asyncio.run(claim("limited"))
    assert limited.trace_context == {"traceparent": TRACEPARENT}


def test_client_get_returns_the_context_a_job_was_added_in(dsn) -> None:
    with Client(dsn) as client:
        with _in_span():
            traced = client.enqueue("t").id
        plain = client.enqueue("t").id
        assert client.get(traced)["trace_context"] == {"traceparent": TRACEPARENT}
        assert client.get(plain)["trace_context"] is None


def test_sched_adds_cli_path_records_a_valid_traceparent(conn, monkeypatch) -> None:
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    monkeypatch.setenv("TRACESTATE", "vendor=opaque")
    enqueue_jobs(conn, [NewJob(task="t")])
    enqueue_jobs(conn, [NewJob(task="t"), NewJob(task="t", key="k")])
    monkeypatch.setenv("TRACEPARENT", "not-a-traceparent")
    enqueue_jobs(conn, [NewJob(task="t")])
    expected = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"}
    assert _contexts(conn) == [expected, expected, expected, None]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # no trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # no parent id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 has four fields
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # a digit short
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert tracing.environment_context({"TRACEPARENT": value, "TRACESTATE": "a=b"}) is None


def test_a_later_traceparent_version_may_carry_more_fields() -> None:
    value = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
    assert tracing.environment_context({"TRACEPARENT": value}) == json.dumps({"traceparent": value}).replace(" ", "")


_PRODUCER = """
import json, sys
from pgsched.client import Client
with Client(sys.argv[1]) as client:
    client.enqueue("t")
    client.enqueue_many([{"task": "t"}, {"task": "t", "key": "k"}])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
"""


def test_a_producer_that_does_not_trace_never_imports_opentelemetry(dsn, conn) -> None:
    pytest.importorskip("opentelemetry.trace")  # installed, yet not imported
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCER, dsn],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRACEPARENT": TRACEPARENT},  # the environment carrier is sched add's alone
        cwd=tempfile.gettempdir(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert _contexts(conn) == [None] * 3
