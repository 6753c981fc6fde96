"""Tracing (README, "Tracing"): a job added inside a span is run in a CONSUMER span of the same trace whose parent
is that span, one span per run with its attempt and outcome; a job added outside any trace runs in a root span;
a handler's own spans are children of its run's span; a worker without opentelemetry runs traced jobs as any.
Real PostgreSQL, a real worker in this process, the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from harness import scalar, states
from inprocess import in_process_worker

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pgsched import tracing
from pgsched.client import Client
from pgsched.worker import Registry

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The spans finished during the test. The global tracer provider can be set once per process: this module
    sets it to the SDK's, exporting into memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another tracer provider was set in this process"
    _EXPORTER.clear()
    return _EXPORTER


def _registry() -> Registry:
    registry = Registry()
    tracer = trace.get_tracer("workerapp")

    @registry.task("async_ok")
    async def async_ok(payload, ctx):
        with tracer.start_as_current_span("inside async"):
            await asyncio.sleep(0)

    @registry.task("sync_ok")
    def sync_ok(payload, ctx):
        with tracer.start_as_current_span("inside sync"):
            pass

    @registry.task("slow", timeout=0.2)
    async def slow(payload, ctx):
        await asyncio.sleep(30)

    @registry.task("flaky", backoff=0.01)
    async def flaky(payload, ctx):
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    return registry


def _named(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def _run_all(dsn: str, count: int) -> None:
    async with in_process_worker(dsn, _registry()) as worker:
        assert len(await worker.claim(count)) == count
        for _ in range(count):
            await worker.run_next()
        assert await worker.flush()


async def test_a_job_added_inside_a_span_runs_in_a_child_span_of_it(dsn, spans) -> None:
    with Client(dsn) as client, trace.get_tracer("producer").start_as_current_span("request") as request:
        async_id = client.enqueue("async_ok", queue="default")
        [sync_id] = [e.id for e in client.enqueue_many([{"task": "sync_ok"}])]
    await _run_all(dsn, 2)
    parent = request.get_span_context()
    for task, job_id in (("async_ok", async_id.id), ("sync_ok", sync_id)):
        [run] = _named(spans, f"sched.run {task}")
        assert run.kind is SpanKind.CONSUMER
        assert run.context.trace_id == parent.trace_id
        assert run.parent is not None and run.parent.span_id == parent.span_id
        assert dict(run.attributes) == {
            "messaging.system": "sched",
            "messaging.operation.type": "process",
            "messaging.destination.name": "default",
            "messaging.message.id": str(job_id),
            "sched.queue": "default",
            "sched.task": task,
            "sched.job.id": job_id,
            "sched.job.attempt": 1,
            "sched.outcome": "succeeded",
        }
        assert run.status.status_code is StatusCode.UNSET
    # The run's span is current while the handler runs, in a sync handler's thread too.
    for task, inside in (("async_ok", "inside async"), ("sync_ok", "inside sync")):
        [run], [child] = _named(spans, f"sched.run {task}"), _named(spans, inside)
        assert child.parent is not None and child.parent.span_id == run.context.span_id


async def test_each_run_of_a_retried_job_is_a_span_of_the_same_trace(dsn, spans) -> None:
    with Client(dsn) as client, trace.get_tracer("producer").start_as_current_span("request") as request:
        client.enqueue("flaky")
    async with in_process_worker(dsn, _registry()) as worker:
        assert len(await worker.claim(1)) == 1
        await worker.run_next()
        assert await worker.flush()
        await asyncio.sleep(0.1)  # the retry's backoff (at most 0.01 s)
        assert len(await worker.claim(1)) == 1
        await worker.run_next()
        assert await worker.flush()
    parent = request.get_span_context()
    first, second = sorted(_named(spans, "sched.run flaky"), key=lambda s: s.attributes["sched.job.attempt"])
    for run in (first, second):
        assert run.context.trace_id == parent.trace_id and run.parent.span_id == parent.span_id
    assert first.context.span_id != second.context.span_id
    assert (first.attributes["sched.job.attempt"], first.attributes["sched.outcome"]) == (1, "retry")
    assert (second.attributes["sched.job.attempt"], second.attributes["sched.outcome"]) == (2, "succeeded")
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: first attempt fails"
    [event] = first.events
    assert event.name == "exception" and event.attributes["exception.message"] == "first attempt fails"
    assert second.status.status_code is StatusCode.UNSET and not second.events


async def test_a_run_stopped_at_its_timeout_ends_its_span_as_timeout(dsn, spans) -> None:
    with Client(dsn) as client:
        client.enqueue("slow")
    async with in_process_worker(dsn, _registry()) as worker:
        assert len(await worker.claim(1)) == 1
        running = worker.start_next()
        await asyncio.sleep(0.3)
        await worker.worker.executor.watch_once(time.monotonic())
        await asyncio.wait_for(running, 5)
        assert await worker.flush()
    [run] = _named(spans, "sched.run slow")
    assert run.attributes["sched.outcome"] == "timeout"
    assert run.status.status_code is StatusCode.ERROR and run.status.description == "timed out after 0.2s"


async def test_a_job_added_outside_any_trace_runs_in_a_root_span(dsn, spans) -> None:
    with Client(dsn) as client:
        client.enqueue("async_ok")
    # Even a worker running inside a span of its own starts a new trace for such a job.
    with trace.get_tracer("host").start_as_current_span("host") as host:
        await _run_all(dsn, 1)
    [run] = _named(spans, "sched.run async_ok")
    assert run.parent is None
    assert run.context.trace_id != host.get_span_context().trace_id


async def test_a_worker_without_opentelemetry_runs_traced_jobs(dsn, spans, monkeypatch) -> None:
    with Client(dsn) as client, trace.get_tracer("producer").start_as_current_span("request"):
        client.enqueue("flaky", payload={}, max_attempts=1)
        client.enqueue("sync_ok")
    # As if opentelemetry were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert tracing.run_tracing() is None
    registry = Registry()
    registry.task("flaky")(lambda payload, ctx: None)
    registry.task("sync_ok")(lambda payload, ctx: {"ran": True})
    async with in_process_worker(dsn, registry) as worker:
        assert worker.worker.executor._tracing is None
        assert len(await worker.claim(2)) == 2
        await worker.run_next()
        await worker.run_next()
        assert await worker.flush()
    assert states(dsn) == {"succeeded": 2}
    assert scalar(dsn, "SELECT count(*) FROM sched_jobs_all WHERE trace_context ? 'traceparent'") == 2
    assert [s.name for s in spans.get_finished_spans()] == ["request"]
