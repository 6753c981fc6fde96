"""Without an SDK set up a span would record nothing, so a run opens none (README, "Tracing"): its handler runs in
the context its job recorded, so what it calls still carries the producer's trace; a job without one costs the
worker nothing. In a process of its own: the global tracer provider, once set by another test, stays set."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHECK = """
from opentelemetry import trace
from pgsched.tracing import RunTracing

tracing = RunTracing()
stored = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
span, context = tracing.start(1, "t", "q", 1, stored)
assert span is None
current = trace.get_current_span(context).get_span_context()
assert (current.trace_id, current.span_id) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331), current
assert tracing.start(2, "t", "q", 1, dict(stored))[1] is context  # parsed once for the jobs of one trace
assert tracing.start(3, "t", "q", 1, None) == (None, None)
print("ok")
"""


def test_without_an_sdk_a_run_has_no_span_and_its_handler_runs_in_the_stored_context() -> None:
    pytest.importorskip("opentelemetry.trace")
    result = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
