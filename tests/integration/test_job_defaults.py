"""A job's defaults come from settings alone, and equal the defaults of the columns they fill: a job added with
no options is the same whether the CLI, the API or a bare INSERT added it."""

from __future__ import annotations

from pgsched import db
from pgsched.jobspec import JobDefaults, build_job
from pgsched.settings import Settings


def _column_default(conn: db.Connection, column: str) -> str:
    row = conn.row(
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'sched_jobs' AND column_name = %s",
        (column,),
    )
    assert row and row[0], f"sched_jobs.{column} has no default"
    return row[0]


def test_job_defaults_equal_the_schemas_column_defaults(conn: db.Connection) -> None:
    job = build_job({"task": "t"}, JobDefaults.from_settings(Settings()))
    # Evaluate each default expression as the server would, e.g. '00:05:00'::interval.
    evaluate = {
        "max_attempts": "SELECT ({})::int",
        "timeout": "SELECT extract(epoch FROM ({})::interval)::float8",
        "priority": "SELECT ({})::int",
        "queue": "SELECT ({})::text",
        "payload": "SELECT ({})::text",
    }
    schema = {name: conn.row(sql.format(_column_default(conn, name)))[0] for name, sql in evaluate.items()}  # type: ignore[index]
    assert schema == {
        "max_attempts": job.max_attempts,
        "timeout": job.timeout_s,
        "priority": job.priority,
        "queue": job.queue,
        "payload": job.payload_json,
    }
    assert (job.max_attempts, job.timeout_s) == (Settings().max_attempts, Settings().job_timeout)
