"""OpenTelemetry tracing (README, "Tracing"): the trace context a job records when it is added, and the span of
each of its runs. The one module that imports opentelemetry, and only where it is installed and of use: a
producer imports nothing until its own code has imported opentelemetry (there is no current span before), and
``sched add`` reads the TRACEPARENT environment variable without it."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

# A W3C traceparent: version-traceid-parentid-flags in lowercase hex; version ff and all-zero ids are invalid, and
# a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?")
# The length W3C lets a tracestate reach (32 members of at most 256 characters, with their commas).
_MAX_TRACESTATE = 8223


def _as_json(carrier: Mapping[str, str]) -> str:
    return json.dumps(carrier, separators=(",", ":"), ensure_ascii=False)


def producer_context() -> str | None:
    """The caller's current trace context as JSON text of propagation fields (what the global propagator writes:
    ``traceparent``, ``tracestate`` and any baggage), or None outside a trace."""
    # No span can be current until the caller's code imported opentelemetry: a look-up, not an import.
    if "opentelemetry.context" not in sys.modules:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return _as_json(carrier) if carrier else None


def environment_context(environ: Mapping[str, str] = os.environ) -> str | None:
    """The trace context that the TRACEPARENT and TRACESTATE environment variables carry (OpenTelemetry's
    environment carrier), as JSON text; None when TRACEPARENT is unset or not a valid W3C traceparent, which a
    receiver ignores."""
    traceparent = environ.get("TRACEPARENT", "").strip()
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or (match.group(1) == "00" and match.group(2) is not None):
        return None
    carrier = {"traceparent": traceparent}
    tracestate = environ.get("TRACESTATE", "").strip()
    if tracestate and len(tracestate) <= _MAX_TRACESTATE:
        carrier["tracestate"] = tracestate
    return _as_json(carrier)


def run_tracing() -> RunTracing | None:
    """The worker's run spans where opentelemetry-api is installed; None (and nothing imported) where it is not."""
    try:
        return RunTracing()
    except ImportError:
        return None


class RunTracing:
    """Spans of job runs: each run is a CONSUMER span ``sched.run <task>`` whose parent is the context its job
    recorded when it was added (a root span for a job added outside a trace), current while the handler runs.
    Its tracer comes from the global tracer provider, so an SDK the worker's app module sets up is the one used."""

    # Parents extracted lately, by their propagation fields: the jobs of one bulk add share theirs, and parsing
    # them is most of a run's cost without an SDK.
    _MAX_PARENTS = 1024

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace

        self._trace = trace
        self._context = context
        self._extract = propagate.extract
        self._tracer = trace.get_tracer("pgsched")
        self._no_sdk = trace.ProxyTracerProvider
        self._consumer = trace.SpanKind.CONSUMER
        self._error = trace.StatusCode.ERROR
        self._root = context.Context()
        self._parents: dict[tuple, Context] = {}

    def _parent(self, carrier: dict[str, Any]) -> Context:
        try:
            key = tuple(carrier.items())
            parent = self._parents.get(key)
        except TypeError:  # a value that is not a string: not from a propagator, extracted as it is
            return self._extract(carrier, self._root)
        if parent is None:
            if len(self._parents) >= self._MAX_PARENTS:
                self._parents.clear()
            parent = self._parents[key] = self._extract(carrier, self._root)
        return parent

    def start(
        self, job_id: int, task: str, queue: str, attempt: int, carrier: Any
    ) -> tuple[Span | None, Context | None]:
        """Start the span of one run; returns it and the context for the handler, in which it is current. Until
        an SDK is set up, a span would record nothing: there is none, and the handler runs in the stored context
        (None: the worker's own, for a job without one)."""
        traced = isinstance(carrier, dict)
        if isinstance(self._trace.get_tracer_provider(), self._no_sdk):
            return None, self._parent(carrier) if traced else None
        parent = self._parent(carrier) if traced else self._root
        span = self._tracer.start_span(
            f"sched.run {task}",
            context=parent,
            kind=self._consumer,
            attributes={
                "messaging.system": "sched",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": str(job_id),
                "sched.queue": queue,
                "sched.task": task,
                "sched.job.id": job_id,
                "sched.job.attempt": attempt,
            },
        )
        return span, self._trace.set_span_in_context(span, parent)

    def attach(self, handler_context: Context) -> object:
        """Make the run's context current in this task or thread; returns the token for ``detach``."""
        return self._context.attach(handler_context)

    def detach(self, token: object) -> None:
        """Restore the context that ``attach`` replaced."""
        self._context.detach(token)  # type: ignore[arg-type]

    def end(self, span: Span, outcome: str, error: BaseException | None = None, message: str | None = None) -> None:
        """End a run's span with its outcome (``succeeded``, ``failed``, ``retry``, ``timeout``, ``cancelled``,
        ``released``); a failure records the handler's exception, or the worker's message when there is none."""
        span.set_attribute("sched.outcome", outcome)
        if outcome in ("failed", "retry", "timeout"):
            if error is not None:
                span.record_exception(error)
            span.set_status(self._error, message)
        span.end()
