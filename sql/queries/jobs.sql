-- Queries on jobs: adding, claiming, recording outcomes, reaping, cancel, retry, cleanup, and reading one job.
-- Fencing (docs/protocol.md, "Leases and fencing"): every write a run makes matches state, worker_id and the
-- run's lease. The batch transitions find their rows with "j.id = ANY(ids)" (the primary key) and no join: a
-- join with unnest() lets the planner, misled by worker_id's statistics, pick a nested loop over a sequential
-- scan, quadratic in the batch. They compare "j.state::text = 'running'" on purpose: with a plain
-- "j.state = 'running'" the planner may read the partial index on running rows with a bitmap scan, which
-- revisits the dead entry every finished job leaves behind until vacuum, so each flush would cost more
-- than the last.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: JobCancelMany
-- Cancel the waiting or queued jobs among %(ids)s at once; for a running one only record the request and tell
-- its worker (NOTIFY, delivered on commit), which stops the handler and records the cancellation. One statement
-- for a whole batch. The rows are locked in id order first, whatever order the ids come in, as the bulk walk
-- locks them (BulkJobLockNext), so two writers sharing rows never wait for each other crosswise. A job that
-- finished while its lock was awaited no longer matches (FOR UPDATE and the UPDATE re-check the state on the
-- row's newest version, which the SET reads too) and is left alone. Returns each changed job's id and state
-- afterwards ("cancelled", or "running" when its worker was asked to stop it), by id; finished and unknown ids
-- return none.
WITH locked AS (
    SELECT id FROM sched_jobs
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('waiting', 'queued', 'running')
    ORDER BY id
    FOR UPDATE
),
changed AS (
    UPDATE sched_jobs j
    SET state = CASE WHEN j.state = 'running' THEN j.state ELSE 'cancelled' END::sched_job_state,
        finished_at = CASE WHEN j.state = 'running' THEN j.finished_at ELSE now() END,
        error = CASE WHEN j.state = 'running' THEN j.error ELSE 'cancelled by request' END,
        cancel_requested_at = coalesce(j.cancel_requested_at, now())
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked)) AND j.state IN ('waiting', 'queued', 'running')
    RETURNING j.id, j.state::text AS state
)
SELECT c.id, c.state, CASE WHEN c.state = 'running' THEN pg_notify('sched_cancel', c.id::text) END
FROM changed c
ORDER BY c.id;

-- name: JobClaim
-- Claim up to %(limit)s ready jobs of one queue for a worker, each under a new lease (docs/protocol.md,
-- "Claim"). "queue = %(queue)s" rather than "queue = ANY(...)": the array form loses the index and sorts the
-- whole ready set. Queue controls apply in this same statement: a paused queue yields nothing, and a
-- rate-limited queue's bucket row is locked, refilled and charged for exactly the jobs taken, so workers
-- together never exceed the rate. A queue without a sched_queues row (the common case) locks nothing.
-- A queue with a concurrency limit (max_running, group_concurrency) or group rates, or whose ready jobs have
-- groups while fair sharing is on (the default), is claimed by sched_claim_limited instead (docs/protocol.md,
-- "Concurrency limits", "Group rates", "Fair sharing"), which this statement calls only for such a queue: the
-- other parts then take nothing, and for every other queue the call is never executed.
-- The ready index is read in segments (docs/protocol.md, "Where a claim starts reading"): the worker passes, in
-- claim order, ranges of priority levels, each read from a position (run_at, id) up to a run_at. A level it has
-- claimed from before starts where its last claim there ended (less a margin), past the entries of jobs claimed
-- since the oldest snapshot still open, which vacuum cannot remove while a long transaction holds it back; the
-- other ranges, and every range in a full pass, start at their beginning. sched_claim_limited reads its head by
-- the same segments, and each group the worker knows (grp_*) from its position. Rows come back with their
-- priority, run_at and group, and whether the claim took them in claim order (marks_level: every job of the
-- claim's reading before it at its level was taken; always so here), for the worker to move its positions.
WITH limited AS (
    -- The probe of grouped ready jobs reads the index of ready jobs that have a group (sched_jobs_ready_group),
    -- which holds no entry of a queue whose jobs have none: a few index pages, whatever the queue's backlog.
    -- In the index's order with LIMIT 1, not EXISTS: the planner would answer an EXISTS with a scan of the
    -- table when it expects grouped jobs to be common, and that scan reads every ungrouped job of the queue.
    -- It runs only for a fair queue (AND evaluates in order, and a subquery only when reached): while vacuum is
    -- held back it walks the dead entries of the first group's claimed jobs, which a queue with fair sharing
    -- turned off never pays, and a worker that knows the queue's groups looks first at the last ones it claimed
    -- from, where it reads them, then whether the queue has a ready job at all where the worker reads it (on a
    -- drained queue it has none), and only then at every group (migration 0017). Through sched_has_grouped_jobs,
    -- which reads those indexes whatever the planner's statistics (on a table never analysed the planner sorted
    -- the queue's whole ready range instead).
    SELECT EXISTS (SELECT 1 FROM sched_queues
                   WHERE queue = %(queue)s
                     AND (max_running IS NOT NULL OR group_concurrency IS NOT NULL OR group_rate IS NOT NULL))
           OR (NOT EXISTS (SELECT 1 FROM sched_queues WHERE queue = %(queue)s AND NOT fair)
               AND sched_has_grouped_jobs(%(queue)s, %(seg_hi)s::int[], %(seg_lo)s::int[],
                                          %(seg_run_at)s::timestamptz[], %(seg_id)s::bigint[],
                                          %(seg_until)s::timestamptz[], %(seg_full)s::bool, %(grp_name)s::text[],
                                          %(grp_priority)s::int[], %(grp_from)s::timestamptz[],
                                          %(grp_run_at)s::timestamptz[], %(grp_id)s::bigint[])) AS yes
),
bucket AS (
    -- Locked, then read in its newest version (a claimer that waited here sees a pause or a charge committed
    -- while it waited, not the older row of its snapshot). greatest(): a claimer that waited for the lock may
    -- have started before the previous one refilled.
    SELECT paused,
           least(burst, tokens + rate * greatest(0, extract(epoch FROM clock_timestamp() - refilled_at)))
               AS level,
           greatest(refilled_at, clock_timestamp()) AS at
    FROM sched_queues
    WHERE queue = %(queue)s AND rate IS NOT NULL AND NOT (SELECT yes FROM limited)
    FOR UPDATE
),
-- How many jobs this claim may take: the bucket's whole tokens (none while paused) for a rate-limited queue,
-- none for a paused one or one claimed by sched_claim_limited, otherwise the limit asked for.
allowed AS (
    SELECT coalesce((SELECT CASE WHEN paused THEN 0 ELSE least(%(limit)s, floor(level)::int) END FROM bucket),
                    (SELECT 0 WHERE (SELECT yes FROM limited)),
                    (SELECT 0 FROM sched_queues WHERE queue = %(queue)s AND paused),
                    %(limit)s) AS n
),
-- One index range scan per segment, in order, until enough rows are locked: the nested loop keeps the segments'
-- order, and the outer LIMIT stops it, so later segments are never read once the claim is full. A segment of one
-- level compares priority for equality, so that its bounds on (run_at, id) start and end the scan; a segment of
-- several levels is read from its beginning.
ready AS (
    SELECT c.id, c.priority, c.run_at
    FROM unnest(%(seg_hi)s::int[], %(seg_lo)s::int[], %(seg_run_at)s::timestamptz[], %(seg_id)s::bigint[],
                %(seg_until)s::timestamptz[])
        AS s(hi, lo, from_run_at, from_id, until_run_at)
    CROSS JOIN LATERAL (
        SELECT * FROM (
         SELECT id, priority, run_at FROM sched_jobs
         WHERE s.hi = s.lo
           AND state = 'queued' AND NOT deferred AND queue = %(queue)s AND run_at <= now() AND priority = s.hi
           AND (run_at, id) >= (s.from_run_at, s.from_id) AND run_at < s.until_run_at
           AND task = ANY(%(tasks)s::text[])
         ORDER BY run_at, id
         LIMIT (SELECT n FROM allowed)
         FOR UPDATE SKIP LOCKED) AS one_level
        UNION ALL
        SELECT * FROM (
         SELECT id, priority, run_at FROM sched_jobs
         WHERE s.hi > s.lo
           AND state = 'queued' AND NOT deferred AND queue = %(queue)s AND run_at <= now()
           AND priority <= s.hi AND priority >= s.lo
           AND task = ANY(%(tasks)s::text[])
         ORDER BY priority DESC, run_at, id
         LIMIT (SELECT n FROM allowed)
         FOR UPDATE SKIP LOCKED) AS levels
    ) AS c
    LIMIT (SELECT n FROM allowed)
),
-- Deferred jobs that have fallen due, highest priority first like every ready job. The earliest due rows are
-- read in index order (an index scan that stops at the first future row, and that marks the dead entries of
-- claimed jobs so later scans skip them, which a bitmap scan would not), then sorted by priority. The window
-- bounds the sort; JobPromoteDue moves due rows into the ready index every second, so the due rows left here
-- are few and the window holds them all. Only a full pass reads rows due more than 2 s ago: the others were
-- promoted by then, and the entries of promoted and claimed rows, which vacuum may be unable to remove, are
-- not walked again.
due AS (
    SELECT id, priority, run_at FROM sched_jobs
    WHERE id = ANY(ARRAY(SELECT id FROM sched_jobs
                         WHERE state = 'queued' AND deferred AND queue = %(queue)s AND run_at <= now()
                           AND run_at >= CASE WHEN %(seg_full)s::bool THEN '-infinity'::timestamptz
                                              ELSE now() - interval '2 seconds' END
                           AND task = ANY(%(tasks)s::text[])
                         ORDER BY run_at, id
                         LIMIT 1000))
      AND state = 'queued' AND deferred
    ORDER BY priority DESC, run_at, id
    LIMIT (SELECT n FROM allowed)
    FOR UPDATE SKIP LOCKED
),
-- Rows locked above but not picked here are let go when the statement's transaction ends.
picked AS (
    SELECT id FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) AS candidates
    ORDER BY priority DESC, run_at, id
    LIMIT (SELECT n FROM allowed)
),
charged AS (
    UPDATE sched_queues s
    SET tokens = b.level - (SELECT count(*) FROM picked), refilled_at = b.at
    FROM bucket b
    WHERE s.queue = %(queue)s
),
-- "= ANY(ARRAY(...))" rather than a join: the planner cannot see through the LIMIT expression how few rows
-- "picked" holds, and would hash-join against a scan of the whole table.
claimed AS (
    UPDATE sched_jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s, started_at = now(),
        lease = nextval('sched_job_lease_seq')
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.task::text, j.payload::jsonb, j.attempt::int, j.max_attempts::int,
              extract(epoch FROM j.timeout)::float8, j.lease, j.trace_context, j.priority::int,
              -- No position before year 1000: a session west of UTC would show year 1 as a date BC, which
              -- Python cannot hold; such a level is read from its beginning.
              CASE WHEN j.run_at >= '1000-01-01 00:00:00+00' THEN j.run_at END,
              NULL::text, true
)
SELECT * FROM claimed
UNION ALL
SELECT l.*
FROM sched_claim_limited(%(queue)s, %(tasks)s::text[], %(limit)s, %(worker_id)s::uuid,
                         %(seg_hi)s::int[], %(seg_lo)s::int[], %(seg_run_at)s::timestamptz[], %(seg_id)s::bigint[],
                         %(seg_until)s::timestamptz[], %(seg_full)s::bool,
                         %(grp_name)s::text[], %(grp_priority)s::int[], %(grp_from)s::timestamptz[],
                         %(grp_run_at)s::timestamptz[], %(grp_id)s::bigint[]) AS l
WHERE (SELECT yes FROM limited);

-- name: JobCopyIn
-- Bulk insert without dedupe keys, straight into the table.
COPY sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name)
FROM STDIN (FORMAT BINARY);

-- name: JobCopyInPlain
-- Bulk insert of jobs that all use the table's defaults for priority, run_at, max_attempts and timeout, and
-- carry no group:
-- fewer columns to encode and send per row, which is most of a bulk insert's cost.
COPY sched_jobs (id, queue, task, payload) FROM STDIN (FORMAT BINARY);

-- name: JobCopyInPlainTraced
-- JobCopyInPlain for jobs that carry a trace context.
COPY sched_jobs (id, queue, task, payload, trace_context) FROM STDIN (FORMAT BINARY);

-- name: JobCopyInTraced
-- Bulk insert without dedupe keys of jobs that carry a trace context (a plain bulk insert sends no such column).
COPY sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name,
                 trace_context)
FROM STDIN (FORMAT BINARY);

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
FROM sched_jobs_all
WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text
GROUP BY queue
ORDER BY queue;

-- name: JobCountFinished
-- What a cleanup would delete now, by state (for --dry-run): a failed or cancelled job that a job depends on
-- stays (see JobDeleteFinished).
SELECT count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM sched_jobs j
WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - %(older_than)s::interval
  AND (state = 'succeeded' OR NOT EXISTS (SELECT 1 FROM sched_job_deps d WHERE d.depends_on = j.id));

-- name: JobDeleteFinished
-- Delete one batch of terminal jobs finished before the cutoff; SKIP LOCKED lets cleanups on many hosts
-- share the work, and small batches keep every transaction and lock short. A failed or cancelled job stays
-- while a job that depends on it remains (docs/protocol.md, "Dependencies"): deleting it would delete the
-- dependency too, and a retry of the dependent would then run it without its parent. Once the dependents are
-- gone (a later batch of the same cleanup, or a later cleanup), it goes. The edges of the deleted jobs go with
-- them. Succeeded jobs in the history go a slot at a time (HistorySlots, HistoryTruncate).
WITH doomed AS (
    SELECT id FROM sched_jobs j
    WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - %(older_than)s::interval
      AND (state = 'succeeded' OR NOT EXISTS (SELECT 1 FROM sched_job_deps d WHERE d.depends_on = j.id))
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM sched_jobs j USING doomed WHERE j.id = doomed.id RETURNING j.id, j.state
), edges AS (
    DELETE FROM sched_job_deps d
    WHERE d.job_id IN (SELECT id FROM deleted) OR d.depends_on IN (SELECT id FROM deleted)
)
SELECT count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM deleted;

-- name: JobDependencyInsertMany
-- Record the edges of a newly inserted job.
INSERT INTO sched_job_deps (job_id, depends_on)
SELECT %(job_id)s, unnest(%(depends_on)s::bigint[]);

-- name: JobExplainFacts
-- What decides whether a ready job runs: its queue's settings and bucket level, its group's bucket level, its
-- queue's and its group's running jobs against their limits (counted only when the queue has them), the live
-- workers that serve its queue (and its task), their load, and how many ready jobs the claim order puts before
-- it.
SELECT coalesce(q.paused, false) AS paused, q.rate,
       least(q.burst, q.tokens + q.rate * greatest(0, extract(epoch FROM clock_timestamp() - q.refilled_at)))
           AS tokens,
       q.max_running, q.group_concurrency, q.group_rate,
       -- The job's group's bucket level, from its row that is not yet full (rows of earlier charges lie in the
       -- past): a group without one has a full bucket.
       (SELECT q.group_burst - greatest(0, extract(epoch FROM b.full_at - clock_timestamp())) * q.group_rate
        FROM sched_group_buckets b
        WHERE q.group_rate IS NOT NULL AND b.queue = %(queue)s AND b.group_name = %(group)s::text
          AND b.full_at > clock_timestamp()
        ORDER BY b.full_at DESC LIMIT 1) AS group_tokens,
       (SELECT count(*) FROM sched_jobs j
        WHERE q.max_running IS NOT NULL AND j.state = 'running' AND j.queue = %(queue)s) AS queue_running,
       (SELECT count(*) FROM sched_jobs j
        WHERE q.group_concurrency IS NOT NULL AND j.state = 'running' AND j.queue = %(queue)s
          AND j.group_name = %(group)s::text) AS group_running,
       (SELECT count(*) FROM sched_workers w
        WHERE w.heartbeat_at > now() - w.stale_after AND %(queue)s = ANY(w.queues)) AS queue_workers,
       (SELECT count(*) FROM sched_workers w
        WHERE w.heartbeat_at > now() - w.stale_after AND %(queue)s = ANY(w.queues)
          AND %(task)s = ANY(w.tasks)) AS task_workers,
       (SELECT coalesce(sum(w.running), 0) FROM sched_workers w
        WHERE w.heartbeat_at > now() - w.stale_after AND %(queue)s = ANY(w.queues)
          AND %(task)s = ANY(w.tasks)) AS busy_slots,
       (SELECT coalesce(sum(w.concurrency), 0) FROM sched_workers w
        WHERE w.heartbeat_at > now() - w.stale_after AND %(queue)s = ANY(w.queues)
          AND %(task)s = ANY(w.tasks)) AS slots,
       (SELECT count(*) FROM sched_jobs j
        WHERE j.state = 'queued' AND j.queue = %(queue)s AND j.run_at <= now() AND j.id <> %(id)s
          AND (j.priority > %(priority)s
               OR (j.priority = %(priority)s AND (j.run_at, j.id) < (%(run_at)s::timestamptz, %(id)s::bigint))))
           AS ahead,
       now() AS now
FROM (SELECT 1) AS one
LEFT JOIN sched_queues q ON q.queue = %(queue)s;

-- name: JobGet
-- One job with the ids it depends on and the trace context it was added in (README, "Tracing"), live or
-- finished (a succeeded job is in the history).
SELECT j.id, j.queue, j.task, j.state::text AS state, j.attempt, j.max_attempts, j.priority, j.run_at, j.created_at,
       j.started_at, j.finished_at, j.payload, j.result, j.error, j.progress,
       coalesce((SELECT array_agg(d.depends_on ORDER BY d.depends_on)
                 FROM sched_job_deps d WHERE d.job_id = j.id), '{}') AS depends_on,
       extract(epoch FROM j.timeout)::float8 AS timeout_s, j.dedupe_key AS key, j.worker_id, j.pending_deps,
       j.group_name AS "group", j.trace_context
FROM sched_jobs_all j
WHERE j.id = %(id)s;

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

-- name: JobGetState
-- A job's state, to say why an operation does not apply to it.
SELECT state::text FROM sched_jobs_all WHERE id = %(id)s;

-- name: JobHistoryStates
-- The states of the given jobs that are in the history (succeeded): asked after JobLockDependencies did not find
-- them in sched_jobs, in a statement of its own so that it sees a success that committed while that one waited.
-- Locked (KEY SHARE) until the new job's edges commit, so that a row-by-row delete (cleanup --exact, purge)
-- waits for them and deletes them with the job, and a slot is not emptied under them.
SELECT id, state::text FROM sched_job_history WHERE id = ANY(%(ids)s::bigint[]) FOR KEY SHARE;

-- name: JobIdReserveMany
-- Reserve ids ahead of a COPY so the caller knows every new job's id without a RETURNING; the server's
-- clock (not the client's) anchors relative delays. The sequence is named, not looked up per row
-- (pg_get_serial_sequence() per row costs more than the nextval itself), and one array comes back.
SELECT array_agg(nextval('sched_jobs_id_seq'::regclass)), now() FROM generate_series(1, %(count)s);

-- name: JobIncomingCopyIn
-- Bulk load the staging table.
COPY sched_jobs_incoming (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred,
                          group_name, dedupe_key)
FROM STDIN (FORMAT BINARY);

-- name: JobIncomingCopyInTraced
-- Bulk load the staging table with jobs that carry a trace context.
COPY sched_jobs_incoming (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred,
                          group_name, dedupe_key, trace_context)
FROM STDIN (FORMAT BINARY);

-- name: JobIncomingCreate
-- A transaction-local staging table for bulk inserts that carry dedupe keys.
-- trace_context is filled only by JobIncomingCopyInTraced; a plain load leaves it NULL and never reads it.
CREATE TEMP TABLE sched_jobs_incoming (
    id bigint, queue text, task text, payload jsonb, priority integer, run_at timestamptz,
    max_attempts integer, timeout interval, deferred boolean, group_name text, dedupe_key text, trace_context jsonb
) ON COMMIT DROP;

-- name: JobIncomingDrop
-- Drop the staging table once its jobs are in, so one transaction can stage several keyed batches.
DROP TABLE sched_jobs_incoming;

-- name: JobInsert
-- Insert one job unless a live job holds the same (queue, key); the NOTIFY is sent only if the insert commits.
-- Unless %(admitted)s, a queue with a backlog cap is skipped too: such adds take the locked path instead,
-- so the common add is this one statement.
WITH ins AS (
    INSERT INTO sched_jobs (queue, task, payload, priority, run_at, deferred, max_attempts, timeout, dedupe_key,
                            group_name, pending_deps, state)
    SELECT %(queue)s::text, %(task)s::text, %(payload)s::jsonb, %(priority)s::int, t.run_at, t.run_at > now(),
           %(max_attempts)s::int, make_interval(secs => %(timeout_s)s::float8), %(key)s::text, %(group)s::text,
           %(pending_deps)s::int,
           CASE WHEN %(pending_deps)s::int > 0 THEN 'waiting' ELSE 'queued' END::sched_job_state
    FROM (SELECT coalesce(%(run_at)s::timestamptz,
                          now() + make_interval(secs => coalesce(%(delay_s)s::float8, 0))) AS run_at) t
    WHERE %(admitted)s::bool
       OR NOT EXISTS (SELECT 1 FROM sched_queues WHERE queue = %(queue)s::text AND max_backlog IS NOT NULL)
    ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
    DO NOTHING
    RETURNING id, queue, run_at, state
)
SELECT id, pg_notify('sched_wakeup', queue || ' ' || extract(epoch FROM run_at)::text)
FROM ins;

-- name: JobInsertFromIncoming
-- Move the given staged jobs into the table in file order; a duplicate key (live, or earlier in the batch) is
-- skipped.
INSERT INTO sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name,
                        dedupe_key)
SELECT id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name, dedupe_key
FROM sched_jobs_incoming WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
DO NOTHING
RETURNING id;

-- name: JobInsertFromIncomingTraced
-- JobInsertFromIncoming for staged jobs that carry a trace context.
INSERT INTO sched_jobs (id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name,
                        dedupe_key, trace_context)
SELECT id, queue, task, payload, priority, run_at, max_attempts, timeout, deferred, group_name, dedupe_key,
       trace_context
FROM sched_jobs_incoming WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
DO NOTHING
RETURNING id;

-- name: JobInsertNow
-- The most common add, in the fewest steps: a job due now, with no key, group or dependencies, which takes the
-- table's defaults for run_at, state and the rest. Skipped (no row) when the queue has a backlog cap: such adds
-- take the locked path. A wake-up for a job due now carries the queue alone.
WITH ins AS (
    INSERT INTO sched_jobs (queue, task, payload, priority, max_attempts, timeout)
    SELECT %(queue)s::text, %(task)s::text, %(payload)s::jsonb, %(priority)s::int, %(max_attempts)s::int,
           make_interval(secs => %(timeout_s)s::float8)
    WHERE NOT EXISTS (SELECT 1 FROM sched_queues WHERE queue = %(queue)s::text AND max_backlog IS NOT NULL)
    RETURNING id, queue
)
SELECT id, pg_notify('sched_wakeup', queue) FROM ins;

-- name: JobInsertTraced
-- JobInsert for a job that carries a trace context (README, "Tracing"): the same rules, one more column, so the
-- common add without one keeps its statement as it is. Jobs due now take this path too.
WITH ins AS (
    INSERT INTO sched_jobs (queue, task, payload, priority, run_at, deferred, max_attempts, timeout, dedupe_key,
                            group_name, pending_deps, state, trace_context)
    SELECT %(queue)s::text, %(task)s::text, %(payload)s::jsonb, %(priority)s::int, t.run_at, t.run_at > now(),
           %(max_attempts)s::int, make_interval(secs => %(timeout_s)s::float8), %(key)s::text, %(group)s::text,
           %(pending_deps)s::int,
           CASE WHEN %(pending_deps)s::int > 0 THEN 'waiting' ELSE 'queued' END::sched_job_state,
           %(trace_context)s::jsonb
    FROM (SELECT coalesce(%(run_at)s::timestamptz,
                          now() + make_interval(secs => coalesce(%(delay_s)s::float8, 0))) AS run_at) t
    WHERE %(admitted)s::bool
       OR NOT EXISTS (SELECT 1 FROM sched_queues WHERE queue = %(queue)s::text AND max_backlog IS NOT NULL)
    ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
    DO NOTHING
    RETURNING id, queue, run_at, state
)
SELECT id, pg_notify('sched_wakeup', queue || ' ' || extract(epoch FROM run_at)::text)
FROM ins;

-- name: JobLeaseSkipAhead
-- Move the lease sequence a billion values ahead. A claimer runs this on every new connection, before its first
-- claim: a server crash can lose claims committed without waiting for their WAL together with the sequence's
-- advance (at most the last moments before the crash), and the values they drew would be drawn again. Every
-- connection to a restarted server is new, so no claim after a crash draws from the lost range; a billion is
-- hours of claims at any rate sched reaches, and bigint holds billions of such skips (docs/protocol.md).
SELECT setval('sched_job_lease_seq', nextval('sched_job_lease_seq') + 1000000000);

-- name: JobListCancelRequested
-- The leases of a worker's running jobs that someone asked to cancel (the polling fallback for the NOTIFY).
SELECT lease FROM sched_jobs
WHERE state = 'running' AND worker_id = %(worker_id)s AND cancel_requested_at IS NOT NULL;

-- name: JobListDependencyStates
-- The jobs one job depends on, with their states.
SELECT j.id, j.state::text
FROM sched_job_deps d JOIN sched_jobs_all j ON j.id = d.depends_on
WHERE d.job_id = %(id)s
ORDER BY j.id;

-- name: JobListRunningForWorker
-- A worker's running jobs and their leases as the database sees them: after a claim whose answer was lost
-- with the connection, the ones the worker never received are given back.
SELECT id, lease FROM sched_jobs WHERE state = 'running' AND worker_id = %(worker_id)s;

-- name: JobLockDependencies
-- Lock the jobs a new job will depend on and mark them, so a concurrent completion either finishes
-- before us (a success has then left for the history: JobHistoryStates finds it) or waits for our commit and
-- then sees our dependency row.
UPDATE sched_jobs SET has_dependents = true
WHERE id = ANY(%(ids)s::bigint[])
RETURNING id, state;

-- name: JobPromoteDue
-- Move deferred jobs that have fallen due into the ready index, a bounded batch per queue, so that the claim's
-- sort of due rows stays small. Each queue's due rows are read by a range scan that stops at the first future
-- row: the cost follows the due rows, never the scheduled backlog. SKIP LOCKED: a row a claimer holds is left for
-- the next pass. A full pass (%(queues)s NULL) finds the queues by a skip scan of the deferred index (one probe
-- per queue) and reads each from its beginning; otherwise only the given queues are read, each from its
-- position: a promoted row leaves a dead entry at the front of its queue's range, which a long transaction keeps
-- vacuum from removing, and a pass from the beginning would walk every one (docs/protocol.md, "Where a
-- promotion starts reading"). One row: per queue, the rows promoted and the run_at of the last; the statement's
-- now(); and the server's seconds for it. "j.state::text" keeps the rows found by their primary key: with
-- "j.state = 'queued'" the planner may read the whole deferred index (every scheduled job) for the ids.
WITH RECURSIVE found AS (
    (SELECT queue FROM sched_jobs
     WHERE %(queues)s::text[] IS NULL AND state = 'queued' AND deferred ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM sched_jobs j
            WHERE j.state = 'queued' AND j.deferred AND j.queue > f.queue ORDER BY j.queue LIMIT 1)
    FROM found f
    WHERE f.queue IS NOT NULL
),
queues (queue, since) AS (
    SELECT queue, '-infinity'::timestamptz FROM found WHERE queue IS NOT NULL
    UNION ALL
    SELECT * FROM unnest(%(queues)s::text[], %(froms)s::timestamptz[])
),
promoted AS (
    UPDATE sched_jobs j
    SET deferred = false
    WHERE j.id = ANY(ARRAY(
        SELECT d.id
        FROM queues q,
             LATERAL (SELECT id FROM sched_jobs
                      WHERE state = 'queued' AND deferred AND queue = q.queue AND run_at >= q.since
                        AND run_at <= now()
                      ORDER BY run_at, id
                      LIMIT %(limit)s
                      FOR UPDATE SKIP LOCKED) d))
      AND j.state::text = 'queued' AND j.deferred
    RETURNING j.queue, j.run_at
)
SELECT array_agg(q.queue), array_agg(coalesce(p.n, 0)), array_agg(p.last), now(),
       extract(epoch FROM clock_timestamp() - statement_timestamp())::float8
FROM queues q
LEFT JOIN (SELECT queue, count(*)::int AS n, max(run_at) AS last FROM promoted GROUP BY queue) p ON p.queue = q.queue;

-- name: JobReadyFirsts
-- The first ready job of each given priority level of a queue, for the worker's tasks, read from the front of
-- the ready index: a worker's probe for jobs that went back before where its claims read (docs/protocol.md,
-- "Where a claim starts reading"). Read-only; it walks what vacuum has not removed yet, on the worker's
-- control connection, so claims never wait for it. One row of arrays, and the seconds the server spent on it,
-- read after the aggregate has consumed every level: what the walk costs the server, without the network's
-- round trip, which a worker far from its database (a managed server, a pooler) would otherwise count as cost.
-- And the statement's start: a level without a row had no ready job of the worker's tasks as of then.
SELECT array_agg(f.priority::int), array_agg(CASE WHEN f.run_at >= '1000-01-01 00:00:00+00' THEN f.run_at END),
       array_agg(f.id), extract(epoch FROM clock_timestamp() - statement_timestamp())::float8,
       statement_timestamp()
FROM unnest(%(levels)s::int[]) AS l(level)
CROSS JOIN LATERAL (
    SELECT priority, run_at, id FROM sched_jobs
    WHERE state = 'queued' AND NOT deferred AND queue = %(queue)s AND run_at <= now() AND priority = l.level
      AND task = ANY(%(tasks)s::text[])
    ORDER BY run_at, id
    LIMIT 1
) AS f;

-- name: JobReadyGroupFirsts
-- The first ready job of each given group of a queue that lies between where the worker's claims read the
-- group's level and where they read the group, at that level: the worker's probe for jobs that went back before
-- where its claims read a group in its turn (docs/protocol.md, "Where a claim starts reading"). Read-only, on the
-- worker's control connection, like JobReadyFirsts; one row of arrays and the server's seconds for it. Through a
-- function, which reads the grouped index whatever the planner's statistics (sched_group_firsts).
SELECT array_agg(f.group_name), array_agg(f.priority),
       array_agg(CASE WHEN f.run_at >= '1000-01-01 00:00:00+00' THEN f.run_at END), array_agg(f.id),
       extract(epoch FROM clock_timestamp() - statement_timestamp())::float8
FROM sched_group_firsts(%(queue)s, %(groups)s::text[], %(priorities)s::int[], %(froms)s::timestamptz[],
                        %(run_ats)s::timestamptz[], %(ids)s::bigint[]) AS f;

-- name: JobReap
-- Requeue (or fail, once attempts are spent) running jobs whose worker stopped beating or vanished, or whose
-- run outlived its timeout plus its worker's grace. Each worker is judged by the liveness contract it
-- registered (stale_after, timeout_grace), whoever reaps (docs/protocol.md, "Reaper"). A job whose cancel was
-- requested is cancelled, never queued again. The claim already counted the attempt.
WITH lost AS (
    SELECT j.id,
           CASE WHEN w.heartbeat_at > now() - w.stale_after THEN 'timed out after ' || j.timeout::text
                ELSE 'worker lost' END AS reason
    FROM sched_jobs j
    LEFT JOIN sched_workers w ON w.id = j.worker_id
    WHERE j.state = 'running'
      AND (w.id IS NULL OR w.heartbeat_at <= now() - w.stale_after
           OR j.started_at + j.timeout + w.timeout_grace < now())
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE sched_jobs j
SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN j.attempt >= j.max_attempts THEN 'failed'
                 ELSE 'queued' END::sched_job_state,
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts THEN now() END,
    worker_id = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts THEN j.worker_id END,
    run_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts THEN j.run_at
                  ELSE now() END,
    error = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled on request (' || lost.reason || ')'
                 ELSE lost.reason || ' (attempt ' || j.attempt || ' of ' || j.max_attempts || ')' END
FROM lost
WHERE j.id = lost.id
RETURNING j.id, j.state, j.queue;

-- name: JobReapLock
-- The on-demand reaper waits for its turn instead of skipping.
SELECT pg_advisory_xact_lock(hashtext('sched_reaper'));

-- name: JobReapLockTry
-- Only one reaper at a time across all workers; the lock ends with the transaction.
SELECT pg_try_advisory_xact_lock(hashtext('sched_reaper'));

-- name: JobReleaseMany
-- Give running jobs back on shutdown without spending an attempt: the claim counted one, so take it back.
-- A job whose cancel was requested is cancelled instead: a cancel sticks (docs/protocol.md, "Cancel").
UPDATE sched_jobs j
SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END::sched_job_state,
    attempt = CASE WHEN j.cancel_requested_at IS NULL THEN j.attempt - 1 ELSE j.attempt END,
    worker_id = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE j.worker_id END,
    started_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE j.started_at END,
    finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    error = CASE WHEN j.cancel_requested_at IS NULL THEN j.error ELSE 'cancelled on request' END
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease = ANY(%(leases)s::bigint[]) AND j.state::text = 'running'
  AND j.worker_id = %(worker_id)s
RETURNING j.lease, j.id, j.queue, j.state, j.has_dependents;

-- name: JobRetryLockDependencies
-- Lock the dependencies of jobs about to be retried, so that a dependency finishing concurrently either
-- commits first (the retry then counts it as done) or waits and then sees the retried job as waiting.
SELECT d.id FROM sched_jobs d
WHERE d.id IN (SELECT depends_on FROM sched_job_deps WHERE job_id = ANY(%(ids)s::bigint[]))
ORDER BY d.id
FOR SHARE;

-- name: JobRetryMany
-- Put failed or cancelled jobs back with a fresh attempt budget: queued when every dependency succeeded,
-- waiting while some are still live. Jobs with a failed or cancelled dependency, or whose dedupe key another
-- live job now holds, are left alone (the caller reports them). Returns the revived jobs.
WITH candidates AS (
    SELECT j.id, j.queue, j.dedupe_key,
           count(dep.id) FILTER (WHERE dep.state <> 'succeeded')::int AS pending,
           count(dep.id) FILTER (WHERE dep.state IN ('failed', 'cancelled')) AS dead
    FROM sched_jobs j
    LEFT JOIN sched_job_deps d ON d.job_id = j.id
    LEFT JOIN sched_jobs_all dep ON dep.id = d.depends_on
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('failed', 'cancelled')
    GROUP BY j.id
),
eligible AS (
    SELECT c.id, c.pending
    FROM (SELECT c.*, row_number() OVER (PARTITION BY c.queue, c.dedupe_key ORDER BY c.id) AS nth
          FROM candidates c) c
    WHERE c.dead = 0
      AND (c.dedupe_key IS NULL
           OR (c.nth = 1 AND NOT EXISTS (
               SELECT 1 FROM sched_jobs o
               WHERE o.queue = c.queue AND o.dedupe_key = c.dedupe_key AND o.state IN ('waiting', 'queued', 'running'))))
)
UPDATE sched_jobs j
SET state = CASE WHEN e.pending > 0 THEN 'waiting' ELSE 'queued' END::sched_job_state,
    pending_deps = e.pending, attempt = 0, run_at = now(), error = NULL, result = NULL, progress = NULL,
    worker_id = NULL, started_at = NULL, finished_at = NULL, cancel_requested_at = NULL
FROM eligible e
WHERE j.id = e.id
RETURNING j.id, j.state::text, j.queue;

-- name: JobSetCancelledMany
-- Record running jobs that stopped because cancellation was requested, fenced by lease.
UPDATE sched_jobs j
SET state = 'cancelled', finished_at = now(),
    error = (%(errors)s::text[])[array_position(%(leases)s::bigint[], j.lease)]
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease = ANY(%(leases)s::bigint[]) AND j.state::text = 'running'
  AND j.worker_id = %(worker_id)s
RETURNING j.lease, j.id, j.has_dependents;

-- name: JobSetFailedMany
-- Record a batch of failures: retry after a jittered exponential backoff (or after the delay the handler
-- asked for) while attempts remain and the failure is retryable, otherwise fail for good; a job whose cancel
-- was requested is cancelled instead, never queued again. Per-job values sit at the position of the run's
-- lease. Backoff (docs/protocol.md, "Retries"): min(cap, base * 2^(attempt-1)) * a factor from [0.5, 1].
-- The cancel request is read from j, never from o: a cancel that commits while this statement waits for the
-- row is seen in j's newest version, while o keeps the statement's older snapshot (a job would end
-- 'cancelled' with the columns of a retry, which the table refuses).
UPDATE sched_jobs j
SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN o.retryable AND j.attempt < j.max_attempts THEN 'queued'
                 ELSE 'failed' END::sched_job_state,
    run_at = CASE WHEN o.again AND j.cancel_requested_at IS NULL
                  THEN now() + make_interval(secs => coalesce(o.after,
                                                              least(o.cap, o.base * power(2, j.attempt - 1))
                                                              * (0.5 + random() * 0.5)))
                  ELSE j.run_at END,
    deferred = o.again AND j.cancel_requested_at IS NULL,
    finished_at = CASE WHEN o.again AND j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    worker_id = CASE WHEN o.again AND j.cancel_requested_at IS NULL THEN NULL ELSE j.worker_id END,
    error = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled on request (the run failed: ' || o.error || ')'
                 ELSE o.error END
FROM (SELECT j2.lease, (%(errors)s::text[])[p] AS error,
             (%(retryable)s::bool[])[p] AS retryable, (%(base)s::float8[])[p] AS base, (%(cap)s::float8[])[p] AS cap,
             (%(after)s::float8[])[p] AS after,
             (%(retryable)s::bool[])[p] AND j2.attempt < j2.max_attempts AS again
      FROM sched_jobs j2, array_position(%(leases)s::bigint[], j2.lease) AS p
      WHERE j2.id = ANY(%(ids)s::bigint[]) AND j2.lease = ANY(%(leases)s::bigint[])) AS o
WHERE j.lease = o.lease AND j.id = ANY(%(ids)s::bigint[]) AND j.state::text = 'running'
  AND j.worker_id = %(worker_id)s
RETURNING j.lease, j.id, j.state, j.queue, j.has_dependents, extract(epoch FROM j.run_at)::float8;

-- name: JobSetLimitsMany
-- Apply a task's declared max_attempts and timeout to jobs a worker just claimed, fenced by lease. Per-job
-- values sit at the position of the job's lease.
UPDATE sched_jobs j
SET max_attempts = greatest((%(max_attempts)s::int[])[array_position(%(leases)s::bigint[], j.lease)], j.attempt),
    timeout = make_interval(secs => (%(timeouts)s::float8[])[array_position(%(leases)s::bigint[], j.lease)])
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease = ANY(%(leases)s::bigint[]) AND j.state::text = 'running'
  AND j.worker_id = %(worker_id)s;

-- name: JobSetProgress
-- A running handler's progress report, fenced by its lease like every other write from a run.
UPDATE sched_jobs SET progress = %(progress)s::jsonb
WHERE id = %(id)s AND lease = %(lease)s AND state = 'running' AND worker_id = %(worker_id)s
RETURNING id;

-- name: JobSetSucceededMany
-- Record a batch of successes, each fenced by its run's lease (docs/protocol.md, "Leases and fencing"): a
-- lease is never handed out twice, so "lease = ANY(leases)" matches exactly the runs that still hold their
-- jobs, and their rows move into the history (sched_finish_succeeded, docs/design.md "History and cleanup").
-- %(results)s is one JSON object keyed by lease (or NULL when no job returned anything), far cheaper to send
-- than a jsonb[] of mostly NULLs. The arrays travel in binary (%(...)b): no per-element quoting. A success stays
-- a success even if a cancel was requested meanwhile: the work was done.
SELECT lease, id, has_dependents
FROM sched_finish_succeeded(%(worker_id)s::uuid, %(ids)b::bigint[], %(leases)b::bigint[], %(results)s::jsonb);

-- name: JobSettleDependents
-- Release or cancel the dependents of jobs this transaction finished. Run in the same transaction as the
-- transition, after it: "finished_at = now()" (the transaction's start time) picks exactly the rows this
-- transaction finished, so replaying a batch after an ambiguous commit never decrements twice.
-- A failed or cancelled job cancels its waiting dependents, transitively; a success releases them. A success
-- is read from the history, where its row went.
WITH RECURSIVE finished AS (
    SELECT j.id, j.state FROM unnest(%(ids)s::bigint[]) AS t(id) JOIN sched_jobs_all j ON j.id = t.id
    WHERE j.has_dependents AND j.finished_at = now()
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
       (SELECT array_agg(DISTINCT queue::text) FROM released WHERE state = 'queued') AS queues;
