"""An outcome that cannot be stored fails its own job, saying why, and never holds back the other outcomes of
its batch: error text with NUL or a lone surrogate is stored escaped; a result with NUL or a lone surrogate, or
over the payload limit, fails the job; an outcome the database refuses anyway is isolated by splitting the
batch and replaced by a plain failure."""

from __future__ import annotations

import psycopg
from harness import query, states
from inprocess import in_process_worker
from loguru import logger
from psycopg.conninfo import conninfo_to_dict

from pgsched import repository
from pgsched.models import NewJob, Outcome, OutcomeKind
from pgsched.worker import Registry


def jobs_by_task(conn, tasks: list[str], **fields) -> dict[str, int]:
    added = repository.enqueue_many(conn, [NewJob(task=task, max_attempts=1, **fields) for task in tasks])
    return {task: e.id for task, e in zip(tasks, added, strict=True)}


def rows(dsn: str) -> dict[int, tuple]:
    found = query(dsn, "SELECT id, state::text, error, result FROM sched_jobs_all")
    return {r[0]: r[1:] for r in found}


async def test_unstorable_results_and_errors_fail_their_own_job_only(dsn, conn) -> None:
    registry = Registry()

    @registry.task("nul_error")
    async def nul_error(payload, ctx):
        raise ValueError("bad\x00byte \udc80")

    @registry.task("nul_result")
    async def nul_result(payload, ctx):
        return {"text": "a\x00b"}

    @registry.task("surrogate_result")
    def surrogate_result(payload, ctx):
        return {"name": b"caf\xe9".decode(errors="surrogateescape")}

    @registry.task("huge_result")
    async def huge_result(payload, ctx):
        return {"text": "x" * 2000}

    @registry.task("fine")
    async def fine(payload, ctx):
        return {"literal": "\\u0000", "text": "h\u00e9"}  # a backslash before "u0000" is no NUL

    ids = jobs_by_task(conn, ["nul_error", "nul_result", "surrogate_result", "huge_result", "fine"])
    async with in_process_worker(dsn, registry, max_payload_bytes=1000) as worker:
        claimed = await worker.claim(10)
        assert len(claimed) == 5
        for _ in claimed:
            await worker.run_next()
        assert await worker.flush()
        assert len(worker.worker.outcomes) == 0
    found = rows(dsn)
    assert found[ids["fine"]] == ("succeeded", None, {"literal": "\\u0000", "text": "h\u00e9"})
    state, error, result = found[ids["nul_error"]]
    assert (state, result) == ("failed", None)
    assert error.startswith("ValueError: bad\\x00byte \\udc80\n")
    assert found[ids["nul_result"]] == (
        "failed",
        "the handler's result contains a NUL character (\\u0000), which cannot be stored",
        None,
    )
    assert found[ids["surrogate_result"]] == (
        "failed",
        "the handler's result is not valid Unicode (it holds a lone surrogate such as \\udc80)",
        None,
    )
    assert found[ids["huge_result"]] == (
        "failed",
        "the handler's result is 2011 bytes, over the limit of 1000 (SCHED_MAX_PAYLOAD_BYTES)",
        None,
    )


async def test_a_batch_the_database_refuses_is_split_and_only_the_bad_outcomes_fail(dsn, conn) -> None:
    registry = Registry()
    registry.task("t")(lambda payload, ctx: None)
    [good, nul_error, surrogate, nul_json, vetoed, last] = (
        e.id for e in repository.enqueue_many(conn, [NewJob(task="t", max_attempts=1) for _ in range(6)])
    )
    # A trigger refuses one job's success (its row's move into the history): an error that is not about the data's
    # encoding at all.
    query(
        dsn,
        f"""
        CREATE FUNCTION veto() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'job % may not succeed', NEW.id; END $$;
        CREATE TRIGGER veto BEFORE INSERT ON sched_job_history FOR EACH ROW
            WHEN (NEW.id = {vetoed}) EXECUTE FUNCTION veto();
        """,
    )
    async with in_process_worker(dsn, registry) as worker:
        claimed = {job.id: job for job in await worker.claim(6)}
        worker.worker.executor.ready.clear()  # not run: the test writes their outcomes itself

        def outcome(job_id: int, kind: OutcomeKind, **fields) -> Outcome:
            return Outcome(job_id, claimed[job_id].lease, kind, **fields)

        # Outcomes as no rule of the worker would make them, to reach the database's own refusals.
        for made in [
            outcome(good, OutcomeKind.SUCCEEDED, result='{"ok":true}'),
            outcome(nul_error, OutcomeKind.FAILED, error="a\x00b", retryable=False),
            outcome(surrogate, OutcomeKind.SUCCEEDED, result='{"s":"\udc80"}'),
            outcome(nul_json, OutcomeKind.SUCCEEDED, result='{"s":"\\u0000"}'),
            outcome(vetoed, OutcomeKind.SUCCEEDED),
            outcome(last, OutcomeKind.SUCCEEDED, result="[1]"),
        ]:
            worker.worker.outcomes.add(made)
        assert await worker.flush()
        assert len(worker.worker.outcomes) == 0
    found = rows(dsn)
    assert found[good] == ("succeeded", None, {"ok": True})
    assert found[last] == ("succeeded", None, [1])
    for refused in (nul_error, surrogate, nul_json, vetoed):
        state, error, result = found[refused]
        assert (state, result) == ("failed", None)
        assert error.startswith("the outcome could not be stored: "), error
    assert f"job {vetoed} may not succeed" in found[vetoed][1]
    assert "NUL" in found[nul_error][1]


def test_a_worker_stores_what_it_can_of_unstorable_outcomes_and_exits_cleanly(dsn, start_worker, add_jobs) -> None:
    # A lone surrogate used to kill the flusher silently, and a NUL to make every flush of the batch fail for
    # ever: here the worker finishes every job and drains.
    bad = add_jobs("unstorable", 1, payload='{"kind": "surrogate"}', max_attempts=1)
    bad += add_jobs("unstorable", 1, payload='{"kind": "nul_error"}', max_attempts=1)
    bad += add_jobs("unstorable", 1, payload='{"kind": "nul_result"}', max_attempts=1)
    good = add_jobs("count", 20)
    worker = start_worker("--burst", "--concurrency", "8")
    assert worker.wait(timeout=30) == 0, worker.log()[-3000:]
    assert states(dsn) == {"succeeded": 20, "failed": 3}
    assert {r[0] for r in query(dsn, "SELECT id FROM sched_jobs_all WHERE state = 'succeeded'")} == set(good)
    errors = dict(query(dsn, "SELECT id, error FROM sched_jobs_all WHERE id = ANY(%s)", (bad,)))
    assert "lone surrogate" in errors[bad[0]]
    assert errors[bad[1]].startswith("ValueError: NUL\\x00here")
    assert "NUL character" in errors[bad[2]]


async def test_outcomes_wait_out_a_locked_table_instead_of_failing(dsn, conn) -> None:
    # A lock or statement timeout says the database is busy, not that an outcome is bad: the batch stays
    # buffered and is written once the table is free, never split into failures.
    registry = Registry()
    registry.task("t")(lambda payload, ctx: {"done": True})
    repository.enqueue_many(conn, [NewJob(task="t") for _ in range(4)])
    name = conninfo_to_dict(dsn)["dbname"]
    query(dsn, f"ALTER DATABASE \"{name}\" SET lock_timeout = '100ms'")
    async with in_process_worker(dsn, registry) as worker:
        for _ in await worker.claim(4):
            await worker.run_next()
        messages: list[str] = []
        logger.enable("pgsched")
        sink = logger.add(lambda message: messages.append(message.record["message"]), format="{message}")
        try:
            with psycopg.connect(dsn) as blocker:
                blocker.execute("SET lock_timeout = 0")
                blocker.execute("LOCK TABLE sched_jobs IN ACCESS EXCLUSIVE MODE")
                assert not await worker.flush()
                assert len(worker.worker.outcomes) == 4
                blocker.rollback()
        finally:
            logger.remove(sink)
            logger.disable("pgsched")
        # One try of the whole batch, not a search for a bad outcome.
        assert messages == [
            "writing 4 outcome(s) failed: database error: canceling statement due to lock timeout; will retry"
        ]
        assert await worker.flush()
    assert query(dsn, "SELECT DISTINCT state::text, error, result FROM sched_jobs_all") == [
        ("succeeded", None, {"done": True})
    ]
