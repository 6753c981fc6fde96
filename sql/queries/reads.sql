-- Read models of the operator tools: the dashboard, sched doctor and the demo's summary. Each reads the
-- indexes the claim keeps small, or says in its description when it scans the whole table. Columns are named
-- as the fields of the rows pgsched/repository/reads.py builds from them.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: DashboardBusiestGroups
-- The busiest groups of the given queues, at most %(limit)s each: the groups with the most running jobs, then,
-- to fill the list, the groups of the next ready jobs in claim order (the first 500); each with its ready
-- jobs counted in the index of grouped ready jobs up to 1,000 (1000 reads "1,000 or more"). It reads the
-- partial index of running jobs (bounded by the workers' slots), 500 entries of the ready index and at most
-- 1,000 entries per group shown: the cost never follows the number of groups or the backlog.
SELECT q.queue, b.group_name, b.running::int AS running,
       (SELECT count(*) FROM (SELECT 1 FROM sched_jobs r
                              WHERE r.state = 'queued' AND NOT r.deferred AND r.queue = q.queue
                                AND r.group_name = b.group_name
                              LIMIT 1000) AS capped)::int AS ready
FROM unnest(%(queues)s::text[]) AS q (queue),
     LATERAL (SELECT u.g AS group_name, sum(u.running) AS running
              FROM (SELECT j.group_name::text AS g, 1 AS running, 0 AS head FROM sched_jobs j
                    WHERE j.state = 'running' AND j.queue = q.queue AND j.group_name IS NOT NULL
                    UNION ALL
                    SELECT h.g, 0, 1 FROM (SELECT j.group_name::text AS g FROM sched_jobs j
                                           WHERE j.state = 'queued' AND NOT j.deferred AND j.queue = q.queue
                                           ORDER BY j.priority DESC, j.run_at, j.id
                                           LIMIT 500) AS h
                    WHERE h.g IS NOT NULL) AS u
              GROUP BY u.g
              ORDER BY sum(u.running) DESC, sum(u.head) DESC, u.g
              LIMIT %(limit)s) AS b
ORDER BY q.queue, b.running DESC, ready DESC, b.group_name;

-- name: DashboardQueueLive
-- Per queue: ready, scheduled and running jobs and the age of the oldest ready one. One branch per partial
-- index (ready, deferred, running), so the cost follows the live set, never the history.
SELECT queue, sum(queued)::bigint AS queued, sum(scheduled)::bigint AS scheduled, sum(running)::bigint AS running,
       coalesce(max(oldest_ready_age_s), 0)::float8 AS oldest_ready_age_s
FROM (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS queued,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           0 AS running,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())) AS oldest_ready_age_s
    FROM sched_jobs
    WHERE state = 'queued' AND NOT deferred AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    GROUP BY queue
    UNION ALL
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()),
           count(*) FILTER (WHERE run_at > now()),
           0,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))
    FROM sched_jobs
    WHERE state = 'queued' AND deferred AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, count(*), NULL
    FROM sched_jobs
    WHERE state = 'running' AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    GROUP BY queue
) live
GROUP BY queue;

-- name: DashboardQueueRecent
-- Per queue: jobs finished in the last minute (throughput) and final failures in the last hour, read
-- through the finished-jobs index from an hour ago on.
SELECT queue,
       count(*) FILTER (WHERE finished_at > now() - interval '1 minute') AS finished_last_minute,
       count(*) FILTER (WHERE state = 'failed') AS failed_last_hour
FROM sched_jobs
WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at > now() - interval '1 hour'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
GROUP BY queue;

-- name: DashboardQueueTotals
-- Per queue: waiting jobs and all-time terminal counts. This one scans the whole table, so the dashboard
-- runs it every few seconds rather than at every refresh.
SELECT queue,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
FROM sched_jobs
WHERE state IN ('waiting', 'succeeded', 'failed', 'cancelled')
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
GROUP BY queue;

-- name: DashboardRecentFailures
-- The latest final failures of the last hour, newest first; walks the finished-jobs index backwards.
SELECT id, queue, task, attempt, coalesce(error, '') AS error,
       extract(epoch FROM now() - finished_at)::float8 AS age_s
FROM sched_jobs
WHERE state = 'failed' AND finished_at > now() - interval '1 hour'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
ORDER BY finished_at DESC
LIMIT %(limit)s;

-- name: DatabaseExists
-- Whether a database of this name exists on the server (the embedded server's first start creates sched's).
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s);

-- name: DemoCountByTask
-- Per-task counts by state over some queues, and the attempts spent (the demo's summary).
SELECT task,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS queued,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       sum(attempt)::bigint AS attempts
FROM sched_jobs
WHERE queue = ANY(%(queues)s::text[])
GROUP BY task
ORDER BY task;

-- name: DoctorJobTableHealth
-- Dead and live tuples of sched_jobs, when it was last vacuumed, and the autovacuum settings that apply to it.
-- Every finished job leaves a dead tuple behind, so a queue table lives or dies by autovacuum.
SELECT coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead,
       extract(epoch FROM now() - greatest(s.last_autovacuum, s.last_vacuum))::float8 AS vacuumed_age_s,
       coalesce(s.autovacuum_count, 0) AS autovacuum_count,
       coalesce(c.reloptions, '{}') AS reloptions,
       current_setting('autovacuum')::bool AS autovacuum_on,
       current_setting('autovacuum_vacuum_scale_factor')::float8 AS scale_factor,
       current_setting('autovacuum_vacuum_threshold')::int AS threshold
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'sched_jobs'::regclass;

-- name: DoctorPausedQueues
-- Queues an operator paused: their backlog is intended, not a symptom.
SELECT queue FROM sched_queues WHERE paused ORDER BY queue;

-- name: DoctorReadyQueues
-- Queues with ready jobs: how many, the oldest one's age, and how many live workers serve each.
-- The inner scans read only the claim's two partial indexes on queued jobs.
SELECT r.queue, r.ready, r.oldest_age_s,
       (SELECT count(*) FROM sched_workers w
        WHERE r.queue = ANY(w.queues) AND w.heartbeat_at > now() - w.stale_after) AS live_workers
FROM (SELECT queue, count(*) AS ready, extract(epoch FROM now() - min(run_at))::float8 AS oldest_age_s
      FROM (SELECT queue, run_at FROM sched_jobs WHERE state = 'queued' AND NOT deferred AND run_at <= now()
            UNION ALL
            SELECT queue, run_at FROM sched_jobs WHERE state = 'queued' AND deferred AND run_at <= now()) ready
      GROUP BY queue) r
ORDER BY r.queue;

-- name: DoctorUnhandledTasks
-- Ready jobs whose queue has live workers but none with a handler for their task: those jobs wait forever.
SELECT j.queue, j.task, count(*) AS ready
FROM sched_jobs j
WHERE j.state = 'queued' AND j.run_at <= now()
  AND EXISTS (SELECT 1 FROM sched_workers w
              WHERE j.queue = ANY(w.queues) AND w.heartbeat_at > now() - w.stale_after)
  AND NOT EXISTS (SELECT 1 FROM sched_workers w
                  WHERE j.queue = ANY(w.queues) AND j.task = ANY(w.tasks)
                    AND w.heartbeat_at > now() - w.stale_after)
GROUP BY j.queue, j.task
ORDER BY j.queue, j.task;

-- name: DoctorVacuumBlockers
-- What keeps vacuum from removing dead jobs: old open transactions of this database (their snapshot or xid
-- pins the xmin horizon), old prepared transactions, standbys' feedback and replication slots holding xmin.
-- Other databases' sessions do not hold back vacuum of this one's tables, so they are left out.
SELECT 'session' AS kind, pid::text AS who, coalesce(application_name, '') AS detail, state,
       extract(epoch FROM now() - xact_start)::float8 AS age_s,
       (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AS pins_horizon,
       left(regexp_replace(query, '\s+', ' ', 'g'), 60) AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
  AND xact_start < now() - %(max_age)s::interval
UNION ALL
SELECT 'prepared transaction', gid, owner, 'prepared', extract(epoch FROM now() - prepared)::float8, true, ''
FROM pg_prepared_xacts
WHERE database = current_database() AND prepared < now() - %(max_age)s::interval
UNION ALL
SELECT 'standby feedback', pid::text, coalesce(application_name, ''), state,
       extract(epoch FROM now() - backend_start)::float8, true, ''
FROM pg_stat_activity
WHERE backend_type = 'walsender' AND backend_xmin IS NOT NULL AND age(backend_xmin) > %(max_xmin_age)s
UNION ALL
SELECT 'replication slot', slot_name::text, CASE WHEN active THEN 'active' ELSE 'inactive' END, '',
       NULL, true, ''
FROM pg_replication_slots
WHERE xmin IS NOT NULL AND age(xmin) > %(max_xmin_age)s
ORDER BY age_s DESC NULLS LAST;
