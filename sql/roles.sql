-- Least-privilege group roles, applied by `sched migrate --roles` in one transaction after the migrations, and
-- re-applied by every later `sched migrate` once the roles exist, so tables added by new migrations get their
-- grants. Not a numbered migration: creating roles needs CREATEROLE, which a schema owner may lack.
--
-- Both roles are NOLOGIN groups; give them to login roles: GRANT sched_producer TO app_user;
-- Neither owns anything, so neither can ALTER, DROP or TRUNCATE a sched table or create indexes on it.
-- Migrations, cleanup, cancel, retry, queue controls and schedules are for the owner (or an admin role).
--
-- Re-runnable: roles are created only when missing, and every grant below is first revoked, so the privileges
-- these roles hold on sched's objects are exactly the ones listed here, whatever was granted before.
-- Every sched_ table must be named below (a test checks this), so a new table gets a deliberate decision.

-- Only a missing role is created: PostgreSQL checks CREATEROLE before it checks whether the role exists, so
-- an owner without CREATEROLE (a managed server's usual application role) could not even re-create an
-- existing one; it only grants to the roles an admin made.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sched_producer') THEN
        CREATE ROLE sched_producer NOLOGIN;
    END IF;
-- unique_violation: another database's `sched migrate --roles` created it at the same moment.
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sched_worker') THEN
        CREATE ROLE sched_worker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

REVOKE ALL ON sched_jobs, sched_job_deps, sched_workers, sched_migrations, sched_queues, sched_schedules,
    sched_group_buckets, sched_job_history, sched_history, sched_jobs_all
    FROM sched_producer, sched_worker;
REVOKE ALL ON FUNCTION sched_finish_succeeded(uuid, bigint[], bigint[], jsonb) FROM PUBLIC, sched_producer;

DO $$
BEGIN
    -- Database and schema names are only known here, so these grants are built with format(%I).
    -- TEMPORARY: a bulk add with dedupe keys stages its rows in a temporary table.
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO sched_producer', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO sched_worker', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sched_producer, sched_worker', current_schema());
    -- The identity sequence behind sched_jobs.id: inserts and the id reservation of bulk adds call nextval.
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM sched_producer, sched_worker',
                   pg_get_serial_sequence('sched_jobs', 'id'));
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO sched_producer, sched_worker',
                   pg_get_serial_sequence('sched_jobs', 'id'));
    -- Every claim draws its runs' leases from this sequence (a worker's only use of it).
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM sched_producer, sched_worker',
                   to_regclass('sched_job_lease_seq'));
    -- USAGE draws leases; UPDATE lets a claimer's new connection skip the sequence ahead (JobLeaseSkipAhead).
    EXECUTE format('GRANT USAGE, UPDATE ON SEQUENCE %s TO sched_worker', to_regclass('sched_job_lease_seq'));
END $$;

-- sched_producer: add jobs and read status. No DELETE anywhere, no claim, no state changes.
GRANT SELECT, INSERT ON sched_jobs TO sched_producer;
-- Succeeded jobs are read from the history, alone or with the live ones (`sched status ID`, `add --after`).
GRANT SELECT ON sched_job_history, sched_jobs_all TO sched_producer;
-- `add --after` locks the succeeded jobs it depends on (JobHistoryStates, FOR KEY SHARE), which PostgreSQL
-- allows only with an UPDATE grant; this column means nothing in the history.
GRANT UPDATE (has_dependents) ON sched_job_history TO sched_producer;
-- `add --after` marks the jobs it depends on (JobLockDependencies); that flag is the only column it may change.
GRANT UPDATE (has_dependents) ON sched_jobs TO sched_producer;
GRANT SELECT, INSERT ON sched_job_deps TO sched_producer;
-- `sched status` lists workers; `migrate --check` reads the applied versions.
GRANT SELECT ON sched_workers, sched_migrations TO sched_producer;
-- Admission control locks a capped queue's row with an UPDATE that writes updated_at back unchanged: it is the
-- column whose change means nothing, so a producer still cannot pause, unpause or re-limit a queue.
GRANT SELECT ON sched_queues TO sched_producer;
GRANT UPDATE (updated_at) ON sched_queues TO sched_producer;

-- sched_worker: claim jobs, record outcomes, heartbeat, reap, fire schedules.
GRANT SELECT ON sched_jobs TO sched_worker;
-- A success moves the job's row into the history through this function, which deletes only the rows it
-- finishes: the role itself may not delete from sched_jobs. Settling dependents reads successes there.
GRANT EXECUTE ON FUNCTION sched_finish_succeeded(uuid, bigint[], bigint[], jsonb) TO sched_worker;
GRANT SELECT ON sched_job_history, sched_jobs_all TO sched_worker;
-- Every column a transition out of 'queued' or 'running' writes (claim, outcomes, retry backoff, release,
-- progress, reaping, settling dependents, a task's declared limits). Not queue, task, payload, priority or
-- dedupe_key: a worker cannot turn an existing job into a different one.
GRANT UPDATE (state, attempt, worker_id, started_at, finished_at, run_at, deferred, result, error, progress,
              pending_deps, max_attempts, timeout, cancel_requested_at, lease)
    ON sched_jobs TO sched_worker;
-- Firing a schedule enqueues its job (ScheduleFire).
GRANT INSERT (queue, task, payload, run_at, deferred, dedupe_key) ON sched_jobs TO sched_worker;
-- Settling dependents reads the edges; only producers add them.
GRANT SELECT ON sched_job_deps TO sched_worker;
-- Its own row: register, heartbeat, deregister. DELETE is table-wide because the reaper, which every worker
-- runs, removes the rows of dead workers. A limitation, accepted: one worker role member can delete another
-- live worker's row. The effect is bounded by fencing: that worker's jobs are requeued, its late outcomes
-- change nothing, and it re-registers at its next heartbeat.
GRANT SELECT, INSERT, UPDATE, DELETE ON sched_workers TO sched_worker;
GRANT SELECT ON sched_migrations TO sched_worker;
-- The claim charges a rate-limited queue's token bucket, moves its turn between groups and the floor of its count
-- of running jobs; pausing and limits stay with the operator.
GRANT SELECT ON sched_queues TO sched_worker;
GRANT UPDATE (tokens, refilled_at, rr_group, group_swept_at, running_floor, running_below) ON sched_queues
    TO sched_worker;
-- The first fair claim of a queue whose jobs have groups makes its row (with no settings) to keep the cursor.
GRANT INSERT (queue) ON sched_queues TO sched_worker;
-- The claim charges the groups' buckets and drops those that are full again (docs/protocol.md, "Group rates").
GRANT SELECT, INSERT, UPDATE, DELETE ON sched_group_buckets TO sched_worker;
GRANT SELECT ON sched_group_buckets TO sched_producer;
-- Workers record the schedules their handlers declare in code and advance schedules as they fire; they do
-- not delete schedules.
GRANT SELECT, INSERT, UPDATE ON sched_schedules TO sched_worker;
