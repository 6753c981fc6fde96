-- The history of succeeded jobs (docs/design.md, "History and cleanup"): a job that succeeds leaves sched_jobs
-- and its row goes into sched_job_history, a table in 16 partitions ("slots") of which one at a time takes the
-- new rows. `sched cleanup` empties a whole slot with TRUNCATE once every job in it is past the retention,
-- instead of deleting its rows one by one, and moves the slot that takes new rows on when it has held them
-- long enough. sched_jobs keeps the live jobs and the failed and cancelled ones (few, and the ones a retry,
-- a dependency or an operator still asks about), which cleanup deletes row by row as before; succeeded jobs
-- written before this migration stay there too and go the same way.
--
-- Reads that may meet a succeeded job (`sched status ID`, lists, counts, a dependency's state) read
-- sched_jobs_all, both tables as one.
--
-- Locks: new tables, a view and a function, all empty or new; dropping the two foreign keys of sched_job_deps
-- takes SHARE ROW EXCLUSIVE on sched_job_deps and sched_jobs for a moment (adds and claims wait for that
-- moment, and behind a long transaction holding either table, for at most the migration's lock wait before it
-- lets go and tries again). No row is moved or rewritten. Workers of an earlier release keep working: they
-- record successes in sched_jobs, which reads and cleanup still cover.

-- The columns of sched_jobs, with the same types (the view below is then a plain append of both, which the
-- planner reads index by index in order: a page of the newest jobs merges two walks), and the slot.
CREATE TABLE sched_job_history (
    id                  bigint NOT NULL,
    queue               sched_queue_name NOT NULL,
    task                sched_task_name NOT NULL,
    payload             sched_payload NOT NULL,
    state               sched_job_state NOT NULL,
    priority            sched_priority NOT NULL,
    run_at              timestamptz NOT NULL,
    attempt             sched_count NOT NULL,
    max_attempts        sched_max_attempts NOT NULL,
    timeout             sched_timeout NOT NULL,
    dedupe_key          sched_dedupe_key,
    worker_id           uuid,
    pending_deps        sched_count NOT NULL,
    deferred            boolean NOT NULL,
    has_dependents      boolean NOT NULL,
    result              jsonb,
    error               text,
    progress            jsonb,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz NOT NULL,
    lease               bigint,
    group_name          sched_group_name,
    trace_context       jsonb,
    -- The slot (partition) the row went into: the one that took new rows when the job finished.
    slot                smallint NOT NULL,
    CONSTRAINT sched_job_history_succeeded CHECK (state = 'succeeded')
) PARTITION BY LIST (slot);

DO $$
BEGIN
    FOR n IN 0..15 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF sched_job_history FOR VALUES IN (%s)',
                       'sched_job_history_' || lpad(n::text, 2, '0'), n);
    END LOOP;
END $$;

-- `sched status ID` and the dependency reads find a job by id; cleanup asks a slot for its newest job, and the
-- dashboard counts recent successes.
CREATE INDEX sched_job_history_id ON sched_job_history (id);
CREATE INDEX sched_job_history_finished_at ON sched_job_history (finished_at);

-- Which slot takes new rows, and since when. One row.
CREATE TABLE sched_history (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one),
    current_slot smallint NOT NULL DEFAULT 0 CHECK (current_slot BETWEEN 0 AND 15),
    since        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sched_history DEFAULT VALUES;

-- Both tables as one, for the reads that may meet a succeeded job.
CREATE VIEW sched_jobs_all AS
SELECT id, queue, task, payload, state, priority, run_at, attempt, max_attempts, timeout, dedupe_key, worker_id,
       pending_deps, deferred, has_dependents, result, error, progress, cancel_requested_at, created_at, started_at,
       finished_at, lease, group_name, trace_context
FROM sched_jobs
UNION ALL
SELECT id, queue, task, payload, state, priority, run_at, attempt, max_attempts, timeout, dedupe_key, worker_id,
       pending_deps, deferred, has_dependents, result, error, progress, cancel_requested_at, created_at, started_at,
       finished_at, lease, group_name, trace_context
FROM sched_job_history;

-- A dependency may now name a job in either table, which a foreign key cannot say: the edges stay while both
-- jobs exist, and whatever deletes jobs deletes their edges (cleanup, purge): by job_id through the primary key,
-- by depends_on through its index.
ALTER TABLE sched_job_deps DROP CONSTRAINT sched_job_deps_job_id_fkey;
ALTER TABLE sched_job_deps DROP CONSTRAINT sched_job_deps_depends_on_fkey;

-- Record a batch of successes (docs/protocol.md, "Outcomes"), each fenced by its run's lease: the running rows
-- the batch still holds leave sched_jobs and go into the history's current slot in one statement. It runs with
-- its owner's rights: the worker role may not delete from sched_jobs (it could make any job vanish), and this
-- deletes only rows it finishes. Dynamic SQL so that each call is planned with the arrays' values ("= ANY" on
-- an array becomes a hash lookup; a generic plan would search the array for every row, quadratic in the
-- batch). The search path is the installation's schema, then pg_temp last: a caller's temporary table can never
-- stand in for one of these.
DO $$
BEGIN
    EXECUTE format($fn$
CREATE FUNCTION sched_finish_succeeded(p_worker uuid, p_ids bigint[], p_leases bigint[], p_results jsonb)
RETURNS TABLE (lease bigint, id bigint, has_dependents boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = %I, pg_temp
AS $body$
BEGIN
    RETURN QUERY EXECUTE $q$
        WITH done AS (
            DELETE FROM sched_jobs j
            WHERE j.id = ANY($1) AND j.lease = ANY($2) AND j.state::text = 'running' AND j.worker_id = $3
            RETURNING j.*
        ),
        kept AS (
            INSERT INTO sched_job_history (
                id, queue, task, payload, state, priority, run_at, attempt, max_attempts, timeout, dedupe_key,
                worker_id, pending_deps, deferred, has_dependents, result, error, progress, cancel_requested_at,
                created_at, started_at, finished_at, lease, group_name, trace_context, slot)
            SELECT d.id, d.queue, d.task, d.payload, 'succeeded', d.priority, d.run_at, d.attempt, d.max_attempts,
                   d.timeout, d.dedupe_key, d.worker_id, d.pending_deps, d.deferred, d.has_dependents,
                   $4 -> d.lease::text, NULL, d.progress, d.cancel_requested_at, d.created_at, d.started_at, now(),
                   d.lease, d.group_name, d.trace_context, (SELECT h.current_slot FROM sched_history h)
            FROM done d
            RETURNING sched_job_history.lease, sched_job_history.id, sched_job_history.has_dependents
        )
        SELECT * FROM kept
    $q$ USING p_ids, p_leases, p_worker, p_results;
END
$body$
$fn$, current_schema());
END $$;

REVOKE ALL ON FUNCTION sched_finish_succeeded(uuid, bigint[], bigint[], jsonb) FROM PUBLIC;

-- Empty one slot with TRUNCATE (docs/design.md, "History and cleanup") if it does not take new rows and every
-- job in it finished before p_before; returns how many jobs it held, or NULL when it was left as it was
-- (it takes new rows, it holds a later job, or its lock was not granted within 0.5 s: a reader of the slot
-- holds it, and the next cleanup tries again rather than make every later reader, a worker settling
-- dependents among them, wait behind this one for longer). Both conditions are read after the lock, which
-- waits out every transaction still writing into the slot. The edges of its jobs go too. TRUNCATE is not
-- MVCC-safe: a REPEATABLE READ snapshot older than it sees the slot empty, as PostgreSQL documents.
-- Custom plans only: a cached generic plan of "slot = p_slot" cannot prune the other slots at planning time and
-- locks them all, so from its sixth call a session's cleanup would wait on (and deadlock with) other slots.
CREATE FUNCTION sched_history_truncate(p_slot integer, p_before timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    part regclass := format('sched_job_history_%s', lpad(p_slot::text, 2, '0'))::regclass;
    held bigint;
BEGIN
    PERFORM set_config('lock_timeout', '500ms', true);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', part);
    IF p_slot = (SELECT h.current_slot FROM sched_history h)
       OR EXISTS (SELECT 1 FROM sched_job_history j WHERE j.slot = p_slot AND j.finished_at >= p_before) THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO held FROM sched_job_history j WHERE j.slot = p_slot;
    DELETE FROM sched_job_deps d
    WHERE EXISTS (SELECT 1 FROM sched_job_history j WHERE j.slot = p_slot AND j.id = d.job_id)
       OR EXISTS (SELECT 1 FROM sched_job_history j WHERE j.slot = p_slot AND j.id = d.depends_on);
    EXECUTE format('TRUNCATE %s', part);
    RETURN held;
EXCEPTION WHEN lock_not_available THEN
    RETURN NULL;
END
$$;
