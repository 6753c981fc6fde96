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
-- through the finished-jobs index and the history's from an hour ago on.
SELECT queue,
       count(*) FILTER (WHERE finished_at > now() - interval '1 minute') AS finished_last_minute,
       count(*) FILTER (WHERE state = 'failed') AS failed_last_hour
FROM sched_jobs_all
WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at > now() - interval '1 hour'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
GROUP BY queue;

-- name: DashboardQueueTotals
-- Per queue: waiting jobs and all-time terminal counts. This one scans the whole table and the history, so the
-- dashboard runs it every few seconds rather than at every refresh.
SELECT queue,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
FROM sched_jobs_all
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
FROM sched_jobs_all
WHERE queue = ANY(%(queues)s::text[])
GROUP BY task
ORDER BY task;

-- name: DoctorHorizonHolders
-- What holds back the xmin horizon below which vacuum may remove sched's dead jobs (docs/design.md, "Vacuum
-- horizon"): transactions and snapshots of this database's sessions; transaction ids of any database's sessions
-- and prepared transactions (every snapshot taken here counts them as running, so any statement running here
-- pins the horizon at them); replication slots' xmin and standbys' feedback (server-wide). A slot's
-- catalog_xmin holds back only the system catalogs. Only what is older than %(max_age)s or more than
-- %(max_xids)s transactions old; not this statement's own session, nor vacuum's.
SELECT 'session' AS kind, a.pid::text AS who, a.datname::text AS database, a.usename::text AS role,
       coalesce(a.application_name, '') AS application_name, host(a.client_addr) AS client_addr, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS age_s,
       greatest(age(a.backend_xmin), age(a.backend_xid)) AS xmin_age, NULL::int AS catalog_xmin_age,
       a.datname = current_database() AS this_database, true AS holds_jobs,
       a.query = '<insufficient privilege>' AS hidden,
       CASE WHEN a.query <> '<insufficient privilege>' THEN left(regexp_replace(a.query, '\s+', ' ', 'g'), 80)
       END AS query
FROM pg_stat_activity a
-- Another role's session shows no backend_type to a role without pg_read_all_stats (hence coalesce): it is
-- judged by its transaction id and xmin, which every role sees.
WHERE a.pid <> pg_backend_pid() AND coalesce(a.backend_type, '') NOT IN ('walsender', 'autovacuum worker')
  AND ((a.datname = current_database() AND a.backend_xmin IS NOT NULL) OR a.backend_xid IS NOT NULL)
  AND (a.xact_start < now() - %(max_age)s::interval
       OR greatest(age(a.backend_xmin), age(a.backend_xid)) > %(max_xids)s)
UNION ALL
SELECT 'prepared transaction', p.gid, p.database::text, p.owner::text, '', NULL, 'prepared',
       extract(epoch FROM now() - p.prepared)::float8, age(p.transaction), NULL,
       p.database = current_database(), true, false, NULL
FROM pg_prepared_xacts p
WHERE p.prepared < now() - %(max_age)s::interval OR age(p.transaction) > %(max_xids)s
UNION ALL
SELECT s.slot_type || ' replication slot', s.slot_name::text, s.database::text, NULL, '', NULL,
       CASE WHEN s.active THEN 'active' ELSE 'inactive' END, NULL, age(s.xmin), age(s.catalog_xmin),
       coalesce(s.database = current_database(), false), coalesce(age(s.xmin) > %(max_xids)s, false), false, NULL
FROM pg_replication_slots s
WHERE age(s.xmin) > %(max_xids)s OR age(s.catalog_xmin) > %(max_xids)s
UNION ALL
SELECT 'standby', r.pid::text, NULL, r.usename::text, coalesce(r.application_name, ''), host(r.client_addr),
       r.state, NULL, age(r.backend_xmin), NULL, false, true, r.state IS NULL, NULL
FROM pg_stat_replication r
WHERE age(r.backend_xmin) > %(max_xids)s
ORDER BY holds_jobs DESC, xmin_age DESC NULLS LAST, catalog_xmin_age DESC NULLS LAST;

-- name: DoctorHorizonVisibility
-- What this role cannot see of the horizon: without pg_read_all_stats, other roles' sessions show their
-- database, user, application and transaction id and xmin, but no start time, state, address or query.
SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all, current_user::text AS role,
       count(*) FILTER (WHERE a.datname = current_database())::int AS hidden_here,
       count(*) FILTER (WHERE a.datname <> current_database())::int AS hidden_elsewhere
FROM pg_stat_activity a
WHERE a.query = '<insufficient privilege>' AND a.datname IS NOT NULL AND a.usesysid IS NOT NULL;

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

-- name: DoctorReadyIndexProbe
-- Read-only, what a worker's full pass reads to find the next ready job of one queue: a walk of the ready index
-- (sched_jobs_ready) from the front, including the entries of claimed and finished jobs that vacuum has not
-- removed yet. EXPLAIN ANALYZE runs it and reports the pages it touched.
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON)
SELECT id FROM sched_jobs
WHERE state = 'queued' AND NOT deferred AND queue = %(queue)s AND run_at <= now()
ORDER BY priority DESC, run_at, id
LIMIT 1;

-- name: DoctorReadyIndexSize
-- Sizes of sched_jobs and of its ready index, and the table's dead tuples as the statistics collector counts
-- them (nothing counts an index's dead entries).
SELECT pg_relation_size('sched_jobs'::regclass) AS table_bytes,
       coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead,
       (SELECT pg_relation_size(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'sched_jobs'::regclass AND c.relname = 'sched_jobs_ready') AS ready_index_bytes,
       current_setting('block_size')::int AS block_size
FROM (SELECT 1) one
LEFT JOIN pg_stat_user_tables s ON s.relid = 'sched_jobs'::regclass;

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
