"""What tracing costs a worker: the cost of one run's span (start, made current, ended) measured alone, then the
drain of no-op jobs by `sched worker --burst` without opentelemetry, with the API alone (no SDK set up), and with
the SDK set up (a batch processor whose exporter drops the spans), the conditions taking turns so that all see
the same machine. The jobs carry a trace context, as jobs added inside a span do.

    python bench/tracing.py [--dsn postgresql://root@127.0.0.1:5432/postgres] [--jobs 20000] [--runs 3]

Needs opentelemetry-api and opentelemetry-sdk (the dev extra). Prints a table and, with --json, one JSON object.
The database is created and dropped by the script."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from psycopg.conninfo import make_conninfo

from pgsched import db, migrate, repository
from pgsched.models import NewJob

CONTEXT = json.dumps({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
# The worker as `sched` runs it, with opentelemetry made unimportable first: as if it were not installed.
WITH_OTEL = "import sys; sys.argv[0] = 'sched'; from pgsched.cli import main; main()"
WITHOUT_OTEL = "import sys; sys.modules['opentelemetry'] = None; " + WITH_OTEL
SDK_APP = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Drop()))
trace.set_tracer_provider(provider)
"""


def per_run_us(count: int, carriers: str) -> float:
    """Microseconds of one run's span: started from the job's stored context (``shared``: one for every job, as a
    bulk add gives; ``distinct``: one per job; ``none``: no context), made current, restored and ended."""
    from pgsched.tracing import RunTracing

    tracing = RunTracing()
    trace_ids = range(1, count + 1) if carriers == "distinct" else [1] * count
    stored = [None] * count if carriers == "none" else [{"traceparent": f"00-{t:032x}-{1:016x}-01"} for t in trace_ids]
    began = time.perf_counter()
    for job_id, carrier in enumerate(stored):
        span, context = tracing.start(job_id, "sched.noop", "default", 1, carrier)
        if context is not None:
            tracing.detach(tracing.attach(context))
        if span is not None:
            tracing.end(span, "succeeded")
    return (time.perf_counter() - began) / count * 1e6


def drain(conn: db.Connection, dsn: str, code: str, app: str | None, jobs: int) -> float:
    """Drain ``jobs`` traced no-op jobs with one worker; jobs/s by the database's clock."""
    added = repository.enqueue_many(conn, [NewJob(task="sched.noop", trace_context=CONTEXT) for _ in range(jobs)])
    ids = [job.id for job in added]
    conn.run("VACUUM ANALYZE sched_jobs")
    args = ["worker", "--burst", "-q", "--concurrency", "20", *(["--app", app] if app else [])]
    env = {**os.environ, "SCHED_DATABASE_URL": dsn}
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True)
    count, seconds = conn.row(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM sched_jobs "
        "WHERE id = ANY(%s) AND state = 'succeeded'",
        (ids,),
    )  # type: ignore[misc]
    if count != len(ids):
        raise SystemExit(f"the worker finished {count} of {len(ids)} jobs")
    conn.run("DELETE FROM sched_jobs WHERE id = ANY(%s)", (ids,))
    conn.run("VACUUM ANALYZE sched_jobs")
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SCHED_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--runs", type=int, default=3, help="drains per condition (the median is kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    result: dict[str, object] = {}
    for setup in ("API alone", "SDK"):
        if setup == "SDK":
            trace.set_tracer_provider(TracerProvider())  # no processor: each span is recorded, then dropped
        for carriers in ("shared", "distinct", "none"):
            result[f"tracing_per_run_us ({setup}, context {carriers})"] = round(per_run_us(100_000, carriers), 2)

    name = f"sched_tracing_{os.getpid()}"
    with db.connect(args.dsn) as admin:
        admin.run(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(args.dsn, dbname=name)
    rates: dict[str, list[float]] = {"without": [], "api": [], "sdk": []}
    try:
        with tempfile.TemporaryDirectory() as folder, db.connect(dsn) as conn:
            Path(folder, "sdk_app.py").write_text(SDK_APP)
            sys.path.insert(0, folder)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
            migrate.apply(conn)
            conditions = (("without", WITHOUT_OTEL, None), ("api", WITH_OTEL, None), ("sdk", WITH_OTEL, "sdk_app"))
            for _ in range(args.runs):
                for label, code, app in conditions:
                    rates[label].append(drain(conn, dsn, code, app, args.jobs))
    finally:
        with db.connect(args.dsn) as admin:
            admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    median = {label: statistics.median(values) for label, values in rates.items()}
    result["jobs_per_drain"] = args.jobs
    for label, text in (("without", "without opentelemetry"), ("api", "API alone"), ("sdk", "SDK, spans dropped")):
        result[f"drain_per_s ({text})"] = [round(r) for r in rates[label]]
    result["api_vs_without_pct (medians)"] = round(100 * median["api"] / median["without"], 1)
    result["sdk_vs_without_pct (medians)"] = round(100 * median["sdk"] / median["without"], 1)
    if args.json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
