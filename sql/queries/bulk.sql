-- Bulk operator actions (sched retry, cancel and purge with filters): count and sample the jobs a filter
-- matches, lock them a batch at a time, and delete terminal ones. Every batch walks the primary key from a
-- cursor id and examines at most %(walk)s entries, so a batch costs the same on a table of millions of
-- finished jobs as on an empty one and never sorts more than what it walked; the next batch resumes after the
-- last entry walked (keyset on id). Retry and cancel then apply the single-job transitions of jobs.sql to the
-- locked ids, one statement for the whole batch (JobRetryMany, JobCancelMany), so a bulk action obeys the same
-- rules as one job (docs/protocol.md).
-- The filter is the same in every query: %(states)s (never empty), and each of queue, task, group, key,
-- error_like (a case-insensitive substring of the error) and since (finished within it, or created within it
-- for a live job) when not NULL. A running job whose cancel was already requested never matches: asking again
-- would change nothing, and a second bulk cancel must count 0.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: BulkHistoryDelete
-- A purge's batch in the history (succeeded jobs, which nothing holds: they are deleted without a lock first):
-- the matching jobs with ids from %(upto)s up to below %(after)s, the range the batch walked, and their edges.
-- Returns each deleted job's id and state.
WITH deleted AS (
    DELETE FROM sched_job_history j
    WHERE j.id < %(after)s::bigint AND j.id >= %(upto)s::bigint
      AND j.state = ANY(%(states)s::sched_job_state[])
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
      AND (%(group)s::text IS NULL OR j.group_name = %(group)s::text)
      AND (%(key)s::text IS NULL OR j.dedupe_key = %(key)s::text)
      AND (%(error_like)s::text IS NULL OR strpos(lower(j.error), lower(%(error_like)s::text)) > 0)
      AND (%(since)s::interval IS NULL OR j.finished_at >= now() - %(since)s::interval)
    RETURNING j.id, j.state::text
),
edges AS (
    DELETE FROM sched_job_deps d
    WHERE d.job_id IN (SELECT id FROM deleted) OR d.depends_on IN (SELECT id FROM deleted)
)
SELECT id, state FROM deleted;

-- name: BulkJobCount
-- How many jobs the filter matches (for --dry-run and the dashboard's preview), live or finished.
SELECT count(*)
FROM sched_jobs_all j
WHERE j.state = ANY(%(states)s::sched_job_state[])
  AND (j.state <> 'running' OR j.cancel_requested_at IS NULL)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
  AND (%(group)s::text IS NULL OR j.group_name = %(group)s::text)
  AND (%(key)s::text IS NULL OR j.dedupe_key = %(key)s::text)
  AND (%(error_like)s::text IS NULL OR strpos(lower(j.error), lower(%(error_like)s::text)) > 0)
  AND (%(since)s::interval IS NULL
       OR CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN j.finished_at ELSE j.created_at END
          >= now() - %(since)s::interval);

-- name: BulkJobDelete
-- Delete the locked terminal jobs of one batch, keeping a failed or cancelled job that a job left behind
-- depends on (outside the batch, or kept itself): deleting it drops its dependency rows, and a retry of the
-- cancelled dependent would then run it without its parent ever succeeding (docs/protocol.md, "Dependencies").
-- A succeeded parent goes: its dependents already counted it as done. The edges of the deleted jobs go with them.
-- Returns each deleted job's id and state.
WITH RECURSIVE batch AS (
    SELECT j.id, j.state FROM sched_jobs j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('succeeded', 'failed', 'cancelled')
),
kept (id) AS (
    SELECT b.id FROM batch b
    WHERE b.state <> 'succeeded'
      AND EXISTS (SELECT 1 FROM sched_job_deps d
                  WHERE d.depends_on = b.id AND d.job_id <> ALL(%(ids)s::bigint[]))
    UNION
    SELECT b.id
    FROM kept k JOIN sched_job_deps d ON d.job_id = k.id JOIN batch b ON b.id = d.depends_on
    WHERE b.state <> 'succeeded'
),
deleted AS (
    DELETE FROM sched_jobs j
    WHERE j.id IN (SELECT id FROM batch) AND j.id NOT IN (SELECT id FROM kept)
    RETURNING j.id, j.state::text
),
edges AS (
    DELETE FROM sched_job_deps d
    WHERE d.job_id IN (SELECT id FROM deleted) OR d.depends_on IN (SELECT id FROM deleted)
)
SELECT id, state FROM deleted;

-- name: BulkJobLockNext
-- Lock the next batch of matching jobs, lowest id first (a dependency is always older than its dependents,
-- so a retry revives dependencies first): the matches among the next %(walk)s ids after %(after)s, at most
-- %(batch)s, SKIP LOCKED so hosts running the same action share the work. Returns the last id walked (the
-- next cursor when fewer than %(batch)s came back; NULL at the end of the table) and the locked ids.
-- FOR UPDATE re-checks the filter on a row's newest version, so a job another host changed meanwhile no
-- longer matches.
WITH walk AS (
    SELECT max(id) AS upto
    FROM (SELECT id FROM sched_jobs WHERE id > %(after)s::bigint ORDER BY id LIMIT %(walk)s) w
),
locked AS (
    SELECT j.id
    FROM sched_jobs j
    WHERE j.id > %(after)s::bigint AND j.id <= (SELECT upto FROM walk)
      AND j.state = ANY(%(states)s::sched_job_state[])
      AND (j.state <> 'running' OR j.cancel_requested_at IS NULL)
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
      AND (%(group)s::text IS NULL OR j.group_name = %(group)s::text)
      AND (%(key)s::text IS NULL OR j.dedupe_key = %(key)s::text)
      AND (%(error_like)s::text IS NULL OR strpos(lower(j.error), lower(%(error_like)s::text)) > 0)
      AND (%(since)s::interval IS NULL
           OR CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN j.finished_at ELSE j.created_at END
              >= now() - %(since)s::interval)
    ORDER BY j.id
    LIMIT %(batch)s
    FOR UPDATE OF j SKIP LOCKED
)
SELECT (SELECT upto FROM walk), ARRAY(SELECT id FROM locked ORDER BY id);

-- name: BulkJobLockPrevious
-- As BulkJobLockNext, walking down from %(after)s, highest id first: a purge deletes dependents before the
-- jobs they depend on, so a parent kept for a dependent that matches too goes in a later batch of the same run.
-- The walk covers the history's ids too (BulkHistoryDelete deletes its matches in the same range). Returns the
-- last (lowest) id walked and the locked ids.
WITH walk AS (
    SELECT min(id) AS upto
    FROM (SELECT id FROM sched_jobs_all WHERE id < %(after)s::bigint ORDER BY id DESC LIMIT %(walk)s) w
),
locked AS (
    SELECT j.id
    FROM sched_jobs j
    WHERE j.id < %(after)s::bigint AND j.id >= (SELECT upto FROM walk)
      AND j.state = ANY(%(states)s::sched_job_state[])
      AND (j.state <> 'running' OR j.cancel_requested_at IS NULL)
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
      AND (%(group)s::text IS NULL OR j.group_name = %(group)s::text)
      AND (%(key)s::text IS NULL OR j.dedupe_key = %(key)s::text)
      AND (%(error_like)s::text IS NULL OR strpos(lower(j.error), lower(%(error_like)s::text)) > 0)
      AND (%(since)s::interval IS NULL
           OR CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN j.finished_at ELSE j.created_at END
              >= now() - %(since)s::interval)
    ORDER BY j.id DESC
    LIMIT %(batch)s
    FOR UPDATE OF j SKIP LOCKED
)
SELECT (SELECT upto FROM walk), ARRAY(SELECT id FROM locked ORDER BY id DESC);

-- name: BulkJobSample
-- The latest %(limit)s matching jobs, newest first, with the first line of each error: what a preview shows.
SELECT j.id, j.queue::text AS queue, j.task::text AS task, j.state::text AS state,
       left(split_part(coalesce(j.error, ''), E'\n', 1), 120) AS error
FROM sched_jobs_all j
WHERE j.state = ANY(%(states)s::sched_job_state[])
  AND (j.state <> 'running' OR j.cancel_requested_at IS NULL)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
  AND (%(group)s::text IS NULL OR j.group_name = %(group)s::text)
  AND (%(key)s::text IS NULL OR j.dedupe_key = %(key)s::text)
  AND (%(error_like)s::text IS NULL OR strpos(lower(j.error), lower(%(error_like)s::text)) > 0)
  AND (%(since)s::interval IS NULL
       OR CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN j.finished_at ELSE j.created_at END
          >= now() - %(since)s::interval)
ORDER BY j.id DESC
LIMIT %(limit)s;
