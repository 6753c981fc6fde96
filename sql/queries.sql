-- Every runtime query sched runs, one per operation, named Entity+Verb so related queries sort together.
-- Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s style.
-- Fencing (DESIGN §2): every transition out of 'running' matches state, worker_id and attempt.

-- name: JobInsert
-- Insert one job unless a live job holds the same (queue, key); the NOTIFY is sent only if the insert commits.
WITH ins AS (
    INSERT INTO sched_jobs (queue, task, payload, priority, run_at, max_attempts, timeout, dedupe_key,
                            pending_deps, state)
    VALUES (%(queue)s, %(task)s, %(payload)s::jsonb, %(priority)s,
            coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => coalesce(%(delay_s)s::float8, 0))),
            %(max_attempts)s,
            make_interval(secs => %(timeout_s)s::float8), %(key)s, %(pending_deps)s::int,
            CASE WHEN %(pending_deps)s::int > 0 THEN 'waiting' ELSE 'queued' END::sched_job_state)
    ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
    DO NOTHING
    RETURNING id, queue, run_at, state
)
SELECT id, pg_notify('sched_wakeup', queue || ' ' || extract(epoch FROM run_at)::text)
FROM ins;

-- name: JobGetLiveByKey
-- The live job holding (queue, key), used after an insert was skipped as a duplicate.
SELECT id FROM sched_jobs
WHERE queue = %(queue)s AND dedupe_key = %(key)s AND state IN ('waiting', 'queued', 'running');

-- name: JobGetLiveByKeys
-- The live jobs holding any of the given (queue, key) pairs, for a bulk insert that skipped duplicates.
SELECT j.queue, j.dedupe_key, j.id
FROM unnest(%(queues)s::text[], %(keys)s::text[]) AS k(queue, dedupe_key)
JOIN sched_jobs j ON j.queue = k.queue AND j.dedupe_key = k.dedupe_key
WHERE j.state IN ('waiting', 'queued', 'running');

-- name: JobLockDependencies
-- Lock the jobs a new job will depend on and mark them, so a concurrent completion either finishes
-- before us (we see 'succeeded') or waits for our commit and then sees our dependency row.
UPDATE sched_jobs SET has_dependents = true
WHERE id = ANY(%(ids)s::bigint[])
RETURNING id, state;

-- name: JobDependencyInsertMany
-- Record the edges of a newly inserted job.
INSERT INTO sched_job_deps (job_id, depends_on)
SELECT %(job_id)s, unnest(%(depends_on)s::bigint[]);

-- name: JobIdReserveMany
-- Reserve ids ahead of a COPY so the caller knows every new job's id without a RETURNING; the server's
-- clock (not the client's) anchors relative delays.
SELECT nextval(pg_get_serial_sequence('sched_jobs', 'id')), now() FROM generate_series(1, %(count)s);

-- name: JobCopyIn
-- Bulk insert without dedupe keys, straight into the table.
COPY sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout) FROM STDIN (FORMAT BINARY);

-- name: JobIncomingCreate
-- A transaction-local staging table for bulk inserts that carry dedupe keys.
CREATE TEMP TABLE sched_jobs_incoming (
    id bigint, queue text, task text, payload jsonb, priority integer, run_at timestamptz,
    max_attempts integer, timeout interval, dedupe_key text
) ON COMMIT DROP;

-- name: JobIncomingCopyIn
-- Bulk load the staging table.
COPY sched_jobs_incoming (id, queue, task, payload, priority, run_at, max_attempts, timeout, dedupe_key)
FROM STDIN (FORMAT BINARY);

-- name: JobInsertFromIncoming
-- Move staged jobs into the table in file order; a duplicate key (live, or earlier in the batch) is skipped.
INSERT INTO sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout, dedupe_key)
SELECT id, queue, task, payload, priority, run_at, max_attempts, timeout, dedupe_key
FROM sched_jobs_incoming ORDER BY id
ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
DO NOTHING
RETURNING id;

-- name: QueueNotifyMany
-- One wake-up per queue for a bulk insert (not one per row).
SELECT pg_notify('sched_wakeup', q || ' ' || extract(epoch FROM now())::text)
FROM unnest(%(queues)s::text[]) AS q;

-- name: JobClaim
-- Claim up to %(limit)s ready jobs of one queue for a worker. "queue = %(queue)s" rather than
-- "queue = ANY(...)": the array form loses the index and sorts the whole ready set.
WITH picked AS (
    SELECT id FROM sched_jobs
    WHERE state = 'queued' AND queue = %(queue)s AND run_at <= now() AND task = ANY(%(tasks)s::text[])
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE sched_jobs j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s, started_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.task, j.payload, j.attempt, j.max_attempts, extract(epoch FROM j.timeout)::float8;

-- name: JobSetSucceededMany
-- Record a batch of successes. %(results)s is one JSON array parallel to the ids (or NULL when no job
-- returned anything), which is far cheaper to send than a jsonb[] of mostly NULLs.
UPDATE sched_jobs j
SET state = 'succeeded', finished_at = now(), result = %(results)s::jsonb -> (o.ord - 1)::int, error = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) WITH ORDINALITY AS o(id, attempt, ord)
WHERE j.id = o.id AND j.state = 'running' AND j.worker_id = %(worker_id)s AND j.attempt = o.attempt
RETURNING j.id;

-- name: JobSetFailedMany
-- Record a batch of failures: retry after a jittered exponential backoff while attempts remain
-- (and the failure is retryable), otherwise fail for good.
-- Backoff (DESIGN §4): min(cap, base * 2^(attempt-1)) * a factor drawn from [0.5, 1].
UPDATE sched_jobs j
SET state = CASE WHEN o.retryable AND j.attempt < j.max_attempts
                 THEN 'queued' ELSE 'failed' END::sched_job_state,
    run_at = CASE WHEN o.retryable AND j.attempt < j.max_attempts
                  THEN now() + make_interval(secs => least(o.cap, o.base * power(2, j.attempt - 1))
                                                    * (0.5 + random() * 0.5))
                  ELSE j.run_at END,
    finished_at = CASE WHEN o.retryable AND j.attempt < j.max_attempts THEN NULL ELSE now() END,
    worker_id = CASE WHEN o.retryable AND j.attempt < j.max_attempts THEN NULL ELSE j.worker_id END,
    error = o.error
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::text[], %(retryable)s::bool[],
            %(base)s::float8[], %(cap)s::float8[]) AS o(id, attempt, error, retryable, base, cap)
WHERE j.id = o.id AND j.state = 'running' AND j.worker_id = %(worker_id)s AND j.attempt = o.attempt
RETURNING j.id, j.state, j.queue, j.run_at;

-- name: JobSetCancelledMany
-- Record running jobs that stopped because cancellation was requested.
UPDATE sched_jobs j
SET state = 'cancelled', finished_at = now(), error = o.error
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::text[]) AS o(id, attempt, error)
WHERE j.id = o.id AND j.state = 'running' AND j.worker_id = %(worker_id)s AND j.attempt = o.attempt
RETURNING j.id;

-- name: JobReleaseMany
-- Give running jobs back on shutdown without spending an attempt: the claim counted one, so take it back.
UPDATE sched_jobs j
SET state = 'queued', attempt = j.attempt - 1, worker_id = NULL, started_at = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS o(id, attempt)
WHERE j.id = o.id AND j.state = 'running' AND j.worker_id = %(worker_id)s AND j.attempt = o.attempt
RETURNING j.id, j.queue;

-- name: JobSettleDependents
-- Release or cancel the dependents of jobs this transaction finished. Run in the same transaction as the
-- transition, after it: "finished_at = now()" (the transaction's start time) picks exactly the rows this
-- transaction finished, so replaying a batch after an ambiguous commit never decrements twice.
-- A failed or cancelled job cancels its waiting dependents, transitively; a success releases them.
WITH RECURSIVE finished AS (
    SELECT id, state FROM sched_jobs
    WHERE id = ANY(%(ids)s::bigint[]) AND has_dependents AND finished_at = now()
),
doomed (id) AS (
    SELECT d.job_id FROM sched_job_deps d JOIN finished f ON d.depends_on = f.id WHERE f.state <> 'succeeded'
    UNION
    SELECT d.job_id FROM sched_job_deps d JOIN doomed ON d.depends_on = doomed.id
),
cancelled AS (
    UPDATE sched_jobs j
    SET state = 'cancelled', finished_at = now(), error = 'a job it depends on failed or was cancelled'
    FROM doomed
    WHERE j.id = doomed.id AND j.state = 'waiting'
    RETURNING j.id
),
released AS (
    UPDATE sched_jobs j
    SET pending_deps = j.pending_deps - r.n,
        state = CASE WHEN j.pending_deps = r.n THEN 'queued' ELSE 'waiting' END::sched_job_state,
        run_at = CASE WHEN j.pending_deps = r.n THEN greatest(j.run_at, now()) ELSE j.run_at END
    FROM (SELECT d.job_id, count(*)::int AS n
          FROM sched_job_deps d JOIN finished f ON d.depends_on = f.id
          WHERE f.state = 'succeeded'
          GROUP BY d.job_id) r
    WHERE j.id = r.job_id AND j.state = 'waiting' AND j.id NOT IN (SELECT id FROM doomed)
    RETURNING j.id, j.queue, j.state
)
SELECT (SELECT count(*) FROM cancelled) AS cancelled,
       (SELECT count(*) FROM released WHERE state = 'queued') AS released,
       (SELECT array_agg(DISTINCT queue) FROM released WHERE state = 'queued') AS queues;

-- name: JobSetProgress
-- A running handler's progress report, fenced like every other write from a worker.
UPDATE sched_jobs SET progress = %(progress)s::jsonb
WHERE id = %(id)s AND state = 'running' AND worker_id = %(worker_id)s AND attempt = %(attempt)s
RETURNING id;

-- name: JobListCancelRequested
-- Which of a worker's running jobs someone asked to cancel (the polling fallback for the NOTIFY).
SELECT id FROM sched_jobs
WHERE state = 'running' AND worker_id = %(worker_id)s AND cancel_requested_at IS NOT NULL;

-- name: JobReapLockTry
-- Only one reaper at a time across all workers; the lock ends with the transaction.
SELECT pg_try_advisory_xact_lock(hashtext('sched_reaper'));

-- name: JobReapLock
-- The on-demand reaper waits for its turn instead of skipping.
SELECT pg_advisory_xact_lock(hashtext('sched_reaper'));

-- name: JobReap
-- Requeue (or fail, once attempts are spent) running jobs whose worker stopped beating or vanished,
-- or whose run outlived its timeout plus a grace period. The claim already counted the attempt.
WITH lost AS (
    SELECT j.id,
           CASE WHEN j.started_at + j.timeout + %(grace)s::interval < now()
                     AND EXISTS (SELECT 1 FROM sched_workers w
                                 WHERE w.id = j.worker_id AND w.heartbeat_at > now() - %(stale_after)s::interval)
                THEN 'timed out after ' || j.timeout::text
                ELSE 'worker lost' END AS reason
    FROM sched_jobs j
    WHERE j.state = 'running'
      AND (j.started_at + j.timeout + %(grace)s::interval < now()
           OR NOT EXISTS (SELECT 1 FROM sched_workers w
                          WHERE w.id = j.worker_id AND w.heartbeat_at > now() - %(stale_after)s::interval))
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE sched_jobs j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'queued' END::sched_job_state,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
    worker_id = CASE WHEN j.attempt >= j.max_attempts THEN j.worker_id END,
    run_at = CASE WHEN j.attempt >= j.max_attempts THEN j.run_at ELSE now() END,
    error = lost.reason || ' (attempt ' || j.attempt || ' of ' || j.max_attempts || ')'
FROM lost
WHERE j.id = lost.id
RETURNING j.id, j.state, j.queue;

-- name: WorkerDeleteStale
-- Forget workers that stopped beating; their jobs were requeued by JobReap.
DELETE FROM sched_workers WHERE heartbeat_at < now() - %(stale_after)s::interval
RETURNING id;

-- name: JobDeleteFinished
-- Delete one batch of terminal jobs finished before the cutoff; SKIP LOCKED lets cleanups on many hosts
-- share the work, and small batches keep every transaction and lock short.
WITH doomed AS (
    SELECT id FROM sched_jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - %(older_than)s::interval
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM sched_jobs j USING doomed WHERE j.id = doomed.id RETURNING j.state
)
SELECT count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM deleted;

-- name: JobCountFinished
-- What a cleanup would delete, by state (for --dry-run).
SELECT count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM sched_jobs
WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - %(older_than)s::interval;

-- name: JobCountByQueue
-- Per-queue counts by state; "scheduled" is queued with run_at in the future.
SELECT queue,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS queued,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now())),
                0)::float8 AS oldest_ready_age_s
FROM sched_jobs
WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text
GROUP BY queue
ORDER BY queue;

-- name: JobGet
-- One job with the ids it depends on.
SELECT j.id, j.queue, j.task, j.state::text, j.attempt, j.max_attempts, j.priority, j.run_at, j.created_at,
       j.started_at, j.finished_at, j.payload, j.result, j.error, j.progress,
       coalesce((SELECT array_agg(d.depends_on ORDER BY d.depends_on)
                 FROM sched_job_deps d WHERE d.job_id = j.id), '{}') AS depends_on,
       extract(epoch FROM j.timeout)::float8 AS timeout_s, j.dedupe_key, j.worker_id, j.pending_deps
FROM sched_jobs j
WHERE j.id = %(id)s;

-- name: WorkerList
-- Registered workers with the age of their last heartbeat.
SELECT id, host, pid, queues, concurrency, running,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
FROM sched_workers
ORDER BY host, pid;

-- name: WorkerRegister
-- A worker announces itself before claiming anything.
INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(tasks)s, %(concurrency)s);

-- name: WorkerHeartbeat
-- Keep the worker alive and publish how many jobs it runs; returns nothing if the worker was reaped.
UPDATE sched_workers SET heartbeat_at = now(), running = %(running)s
WHERE id = %(id)s
RETURNING id;

-- name: WorkerDeregister
-- A worker leaves cleanly.
DELETE FROM sched_workers WHERE id = %(id)s;

-- name: MigrationListApplied
-- Applied migrations, or nothing on an empty database.
SELECT version, name, checksum FROM sched_migrations ORDER BY version;

-- name: MigrationTableExists
-- Whether any migration was ever applied here.
SELECT to_regclass('sched_migrations') IS NOT NULL;

-- name: MigrationLock
-- Serialize concurrent migrates; held until the session's connection closes.
SELECT pg_advisory_lock(hashtext('sched_migrate'));

-- name: MigrationUnlock
-- Release the migrate lock.
SELECT pg_advisory_unlock(hashtext('sched_migrate'));

-- name: MigrationRecord
-- Mark one migration applied, in the same transaction as its DDL.
INSERT INTO sched_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);
