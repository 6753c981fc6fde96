"""What handlers return and report: JSON results are stored, anything else fails the job clearly; progress is
stored at a bounded rate; a worker claims only tasks it has handlers for; a bad --app is a usage error."""

from __future__ import annotations

import os
import signal

from harness import query, scalar, states, wait_for


def test_json_results_are_stored_and_non_json_fails_the_job_without_retry(dsn, start_worker, add_jobs) -> None:
    [good] = add_jobs("echo", payload='{"n": 7, "tags": ["a", "b"]}')
    [bad] = add_jobs("not_json")
    worker = start_worker("--burst", "--concurrency", "2")
    assert worker.wait(timeout=30) == 0, worker.log()[-2000:]
    rows = dict((r[0], r[1:]) for r in query(dsn, "SELECT id, state::text, attempt, result, error FROM sched_jobs_all"))
    assert rows[good] == ("succeeded", 1, {"echo": {"n": 7, "tags": ["a", "b"]}, "attempt": 1, "text": "hé"}, None)
    state, attempt, result, error = rows[bad]
    # Attempts remain (3), but a handler that returns something unstorable would do so again: no retry.
    assert (state, attempt, result) == ("failed", 1, None)
    assert error.startswith("the handler returned a value that is not JSON (dict): ")
    assert "set" in error
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE job_id = %s", (bad,)) == 1


def test_a_handler_fails_a_job_for_good_or_retries_it_at_the_time_it_names(dsn, start_worker, add_jobs) -> None:
    [refused] = add_jobs("refuse")
    [later] = add_jobs("retry_later", payload='{"after": "30s"}')
    [soon] = add_jobs("retry_later", payload='{"after": 0.5, "succeed_on": 2}')
    [last] = add_jobs("retry_later", payload='{"after": 0}', max_attempts=1)
    worker = start_worker("--concurrency", "4")
    wait_for(lambda: states(dsn) == {"failed": 2, "queued": 1, "succeeded": 1}, 20, "the jobs to settle")

    def row(job_id: int) -> tuple:
        return query(
            dsn,
            "SELECT state::text, attempt, error, extract(epoch FROM run_at - now())::float8, result"
            " FROM sched_jobs_all WHERE id = %s",
            (job_id,),
        )[0]

    # Fail: no retry, though two attempts remain; the message is the error, without a traceback.
    assert row(refused)[:3] == ("failed", 1, "Fail: card refused")
    # Retry: back in the queue at the time asked for (no backoff, no jitter), having spent an attempt...
    state, attempt, error, due_in, _ = row(later)
    assert (state, attempt, error) == ("queued", 1, "Retry: upstream busy")
    assert 25 < due_in <= 30
    # ...run again once that time comes...
    assert row(soon)[0:2] == ("succeeded", 2) and row(soon)[4] == {"attempt": 2}
    gap = scalar(
        dsn,
        "SELECT extract(epoch FROM max(at) - min(at))::float8 FROM executions WHERE job_id = %s",
        (soon,),
    )
    assert gap >= 0.45
    # ...and a job out of attempts fails, as with any failure.
    assert row(last)[:3] == ("failed", 1, "Retry: upstream busy")
    assert scalar(dsn, "SELECT count(*) FROM executions WHERE job_id IN (%s, %s)", (refused, last)) == 2
    log = worker.log()
    assert f"job {refused} refuse failed on attempt 1/3 (no retry): Fail: card refused" in log
    assert f"job {later} retry_later failed on attempt 1/3 (retry asked in 30s): Retry: upstream busy" in log


def test_progress_is_stored_at_a_bounded_rate(dsn, start_worker, add_jobs) -> None:
    with_trigger = """
        CREATE TABLE progress_writes (job_id bigint, progress jsonb, at timestamptz DEFAULT clock_timestamp());
        CREATE FUNCTION note_progress() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.progress IS DISTINCT FROM OLD.progress THEN
                INSERT INTO progress_writes (job_id, progress) VALUES (NEW.id, NEW.progress);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER note_progress AFTER UPDATE ON sched_jobs FOR EACH ROW EXECUTE FUNCTION note_progress();
    """
    query(dsn, with_trigger)
    [job_id] = add_jobs("chatty", payload='{"reports": 300, "linger": 2.5}')
    worker = start_worker("--burst", "--concurrency", "1")
    wait_for(lambda: query(dsn, "SELECT 1 FROM executions WHERE phase = 'reported'"), 20, "the handler's 300 reports")
    # The last report reaches the database while the job still runs (the rate limit is one write a second).
    wait_for(
        lambda: scalar(dsn, "SELECT progress FROM sched_jobs_all WHERE id = %s", (job_id,)) == {"i": 299},
        3,
        "the last progress report to be stored",
    )
    assert scalar(dsn, "SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,)) == "running"
    assert worker.wait(timeout=30) == 0
    assert query(dsn, "SELECT state::text, progress FROM sched_jobs_all") == [("succeeded", {"i": 299})]
    writes = [row[0] for row in query(dsn, "SELECT progress FROM progress_writes ORDER BY at")]
    seconds = scalar(
        dsn, "SELECT extract(epoch FROM finished_at - started_at)::float8 FROM sched_jobs_all WHERE id = %s", (job_id,)
    )
    # 300 reports over a few seconds: at most one write per second (plus the first), in report order.
    assert 2 <= len(writes) <= int(seconds) + 2, (writes, seconds)
    assert [w["i"] for w in writes] == sorted(w["i"] for w in writes)


def test_a_worker_claims_only_tasks_it_has_handlers_for(dsn, start_worker, add_jobs) -> None:
    [unknown] = add_jobs("nobody.handles.this")
    known = add_jobs("count", 3)
    worker = start_worker("--burst", "--concurrency", "4")
    assert worker.wait(timeout=30) == 0, worker.log()[-2000:]
    assert query(dsn, "SELECT state::text, attempt, worker_id FROM sched_jobs_all WHERE id = %s", (unknown,)) == [
        ("queued", 0, None)
    ]
    assert states(dsn) == {"queued": 1, "succeeded": 3}
    assert {r[0] for r in query(dsn, "SELECT job_id FROM executions")} == set(known)


def test_an_app_module_that_cannot_be_imported_is_a_usage_error(sched, tmp_path) -> None:
    missing = sched("worker", "--app", "no_such_module_for_sched", "--burst")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert missing.stderr.splitlines() == [
        "Error: cannot import --app 'no_such_module_for_sched': "
        "ModuleNotFoundError: No module named 'no_such_module_for_sched'"
    ]

    (tmp_path / "broken_handlers.py").write_text("raise RuntimeError('boom at import')\n")
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    broken = sched("worker", "--app", "broken_handlers", "--burst", env=env)
    assert broken.returncode == 2
    assert broken.stderr.splitlines() == ["Error: cannot import --app 'broken_handlers': RuntimeError: boom at import"]

    # A bad @task option is caught as the module is imported, before anything is recorded.
    (tmp_path / "bad_cron.py").write_text(
        "from pgsched.worker import task\n\n@task('digest', cron='61 * * * *')\ndef digest(payload, ctx):\n    pass\n"
    )
    bad = sched("worker", "--app", "bad_cron", "--burst", env=env)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "Error: cannot import --app 'bad_cron': InvalidInput: task digest: invalid cron expression '61 * * * *':"
        " minute hour day month weekday, each in range, e.g. '*/5 * * * *'"
    ]


def test_the_worker_stops_cleanly_on_sigint_too(dsn, start_worker, add_jobs) -> None:
    add_jobs("count", 5)
    worker = start_worker("--concurrency", "2")
    wait_for(lambda: states(dsn) == {"succeeded": 5}, 20, "the jobs to finish")
    worker.send(signal.SIGINT)
    assert worker.wait(timeout=15) == 0
    assert "received SIGINT, shutting down gracefully" in worker.log()
    assert states(dsn) == {"succeeded": 5}
