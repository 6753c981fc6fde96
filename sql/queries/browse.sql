-- Read models of the web dashboard's job pages: pages of one queue's jobs and groups of recent failures.
-- Every listing is a keyset page that walks one index in its own order from a cursor and examines at most
-- %(walk)s entries, so a page costs the same on the millionth row as on the first, and a filter that no index
-- serves (task, key on finished jobs) narrows what is shown without ever scanning the table: a page that found
-- few matches within its walk returns the last entry walked, and the next page goes on from there.
-- Each listing returns up to %(limit)s + 1 matches (one more says a next page exists) in index order, each
-- marked hit, plus the last entry walked (hit or not) when the walk used its whole budget; the after_* columns
-- of a row are the cursor that resumes after it.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: BrowseFailureGroups
-- Final failures of the last %(window)s grouped by queue, task and the error's first line, most frequent first,
-- among at most the latest %(walk)s finished jobs: a walk of the finished-jobs index, newest first (failed and
-- cancelled jobs stay in sched_jobs; succeeded ones, in the history, are not walked).
SELECT queue, task, error, count(*) AS jobs, max(id) AS latest_id,
       extract(epoch FROM now() - max(finished_at))::float8 AS last_age_s,
       extract(epoch FROM now() - min(walked_since))::float8 AS walked_back_s
FROM (
    -- walked_since: how far back the walk reached, less than the window when the budget ran out. The window
    -- function sits above the walk's LIMIT, so it sees only the rows walked.
    SELECT latest.*, min(finished_at) OVER () AS walked_since
    FROM (
        SELECT queue::text AS queue, task::text AS task, state, id, finished_at,
               left(split_part(coalesce(error, ''), E'\n', 1), 300) AS error
        FROM sched_jobs
        WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at > now() - %(window)s::interval
        ORDER BY finished_at DESC
        LIMIT %(walk)s
    ) latest
) walked
WHERE state = 'failed'
GROUP BY queue, task, error
ORDER BY count(*) DESC, max(finished_at) DESC
LIMIT %(groups)s;

-- name: BrowseJobGetByKey
-- The live job of a queue holding a dedupe key, if any: one probe of the live-key index (one live job per key).
SELECT id, task::text AS task, state::text AS state, deferred, attempt, max_attempts, priority, run_at, created_at,
       finished_at, dedupe_key::text AS key, group_name::text AS group_name,
       left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error
FROM sched_jobs
WHERE queue = %(queue)s::text AND dedupe_key = %(key)s::text AND state IN ('waiting', 'queued', 'running');

-- name: BrowseJobsAll
-- A page of a queue's jobs in every state, newest first: a walk down from the cursor id of the primary key and of
-- the history's index on id, merged.
SELECT *
FROM (
    SELECT w.*, w.queue = %(queue)s::text AND (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text)
                AND (%(key)s::text IS NULL OR w.key = %(key)s::text) AS hit,
           row_number() OVER () AS walked
    FROM (
        SELECT id, queue::text AS queue, task::text AS task, state::text AS state, deferred, attempt, max_attempts,
               priority, run_at, created_at, finished_at, dedupe_key::text AS key, group_name::text AS group_name,
               left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error,
               NULL::int AS after_priority, NULL::timestamptz AS after_at, id AS after_id
        FROM sched_jobs_all
        WHERE id < %(after_id)s::bigint
        ORDER BY id DESC
        LIMIT %(walk)s
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;

-- name: BrowseJobsFinished
-- A page of a queue's succeeded, failed or cancelled jobs, latest finished first: a walk of the finished-jobs
-- index (finished_at, for every queue) and of the history's, merged, down from the cursor (finished_at, id).
SELECT *
FROM (
    SELECT w.*, w.queue = %(queue)s::text AND w.state = %(state)s::text
                AND (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text)
                AND (%(key)s::text IS NULL OR w.key = %(key)s::text) AS hit,
           row_number() OVER () AS walked
    FROM (
        SELECT id, queue::text AS queue, task::text AS task, state::text AS state, deferred, attempt, max_attempts,
               priority, run_at, created_at, finished_at, dedupe_key::text AS key, group_name::text AS group_name,
               left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error,
               NULL::int AS after_priority, finished_at AS after_at, id AS after_id
        FROM sched_jobs_all
        -- The first condition is the one the index can use (it holds finished_at alone); the row comparison
        -- then skips the jobs of the cursor's own instant already shown (a batch of outcomes shares one now()).
        WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at <= %(after_at)s::timestamptz
          AND (finished_at, id) < (%(after_at)s::timestamptz, %(after_id)s::bigint)
        ORDER BY finished_at DESC, id DESC
        LIMIT %(walk)s
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;

-- name: BrowseJobsQueued
-- A page of a queue's ready jobs in claim order (priority, then run_at, then id): the rest of the cursor's
-- priority level, then the lower levels, each a range of the claim's ready index.
SELECT *
FROM (
    SELECT w.*, (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text) AS hit, row_number() OVER () AS walked
    FROM (
        -- Two ranges instead of one OR: the index is (queue, priority DESC, run_at, id), and a row comparison
        -- across a descending and an ascending column cannot bound an index scan. The branches are read in
        -- order (a plain Append), which is claim order.
        (SELECT id, task::text AS task, state::text AS state, deferred, attempt, max_attempts, priority, run_at,
                created_at, finished_at, dedupe_key::text AS key, group_name::text AS group_name,
                left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error,
                priority AS after_priority, run_at AS after_at, id AS after_id
         FROM sched_jobs
         WHERE state = 'queued' AND NOT deferred AND queue = %(queue)s::text
           AND priority = %(after_priority)s::int
           AND (run_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
         ORDER BY run_at, id
         LIMIT %(walk)s)
        UNION ALL
        (SELECT id, task::text, state::text, deferred, attempt, max_attempts, priority, run_at, created_at,
                finished_at, dedupe_key::text, group_name::text, left(split_part(coalesce(error, ''), E'\n', 1), 200),
                priority, run_at, id
         FROM sched_jobs
         WHERE state = 'queued' AND NOT deferred AND queue = %(queue)s::text AND priority < %(after_priority)s::int
         ORDER BY priority DESC, run_at, id
         LIMIT %(walk)s)
        LIMIT %(walk)s
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;

-- name: BrowseJobsRunning
-- A page of a queue's running jobs, newest first: the running-jobs index holds only running jobs, a small set
-- bounded by the workers' slots, read whole and sorted.
SELECT *
FROM (
    SELECT w.*, w.queue = %(queue)s::text AND (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text) AS hit,
           row_number() OVER () AS walked
    FROM (
        SELECT id, queue::text AS queue, task::text AS task, state::text AS state, deferred, attempt, max_attempts,
               priority, run_at, created_at, finished_at, dedupe_key::text AS key, group_name::text AS group_name,
               left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error,
               NULL::int AS after_priority, NULL::timestamptz AS after_at, id AS after_id
        FROM sched_jobs
        WHERE state = 'running' AND id < %(after_id)s::bigint
        ORDER BY id DESC
        LIMIT %(walk)s
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;

-- name: BrowseJobsScheduled
-- A page of a queue's deferred jobs (a delay or a retry's backoff), soonest first: a range of the claim's
-- deferred index after the cursor (run_at, id).
SELECT *
FROM (
    SELECT w.*, (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text) AS hit, row_number() OVER () AS walked
    FROM (
        SELECT id, task::text AS task, state::text AS state, deferred, attempt, max_attempts, priority, run_at,
               created_at, finished_at, dedupe_key::text AS key, group_name::text AS group_name,
               left(split_part(coalesce(error, ''), E'\n', 1), 200) AS error,
               NULL::int AS after_priority, run_at AS after_at, id AS after_id
        FROM sched_jobs
        WHERE state = 'queued' AND deferred AND queue = %(queue)s::text
          AND (run_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
        ORDER BY run_at, id
        LIMIT %(walk)s
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;

-- name: BrowseJobsWaiting
-- A page of a queue's jobs waiting on dependencies, newest first. No index holds waiting jobs; a job waits
-- only if it has dependency rows, so this walks the dependency table's primary key (job_id) down from the
-- cursor id, one entry per dependent job, and reads each job by its primary key.
SELECT *
FROM (
    SELECT w.*, w.queue = %(queue)s::text AND w.state = 'waiting'
                AND (%(task)s::text IS NULL OR w.task = %(task)s::text)
                AND (%(group)s::text IS NULL OR w.group_name = %(group)s::text) AS hit,
           row_number() OVER () AS walked
    FROM (
        SELECT j.id, j.queue::text AS queue, j.task::text AS task, j.state::text AS state, j.deferred, j.attempt,
               j.max_attempts, j.priority, j.run_at, j.created_at, j.finished_at, j.dedupe_key::text AS key,
               j.group_name::text AS group_name,
               left(split_part(coalesce(j.error, ''), E'\n', 1), 200) AS error,
               NULL::int AS after_priority, NULL::timestamptz AS after_at, j.id AS after_id
        FROM (SELECT DISTINCT job_id FROM sched_job_deps
              WHERE job_id < %(after_id)s::bigint
              ORDER BY job_id DESC
              LIMIT %(walk)s) d
        JOIN sched_jobs j ON j.id = d.job_id
        ORDER BY d.job_id DESC
    ) w
) m
WHERE hit OR walked = %(walk)s
LIMIT %(limit)s + 1;
