-- What sched bench reads and clears in its own throwaway database between measurements.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: BenchCommitInsert
-- One durable commit of one small row: the ceiling of any one-at-a-time durable insert on this server.
INSERT INTO sched_bench_commits (body) VALUES ('x');

-- name: BenchCommitTableCreate
-- The scratch table of the commit baseline.
CREATE TABLE sched_bench_commits (id bigserial PRIMARY KEY, body text);

-- name: BenchCommitTableDrop
-- Drop the commit baseline's scratch table.
DROP TABLE sched_bench_commits;

-- name: BenchJobsDeleteQueue
-- Empty one benchmark queue between repeated runs (its succeeded jobs are in the history).
WITH history AS (DELETE FROM sched_job_history WHERE queue = %(queue)s)
DELETE FROM sched_jobs WHERE queue = %(queue)s;

-- name: BenchJobsSince
-- Jobs with an id above a mark: how many succeeded, the seconds from the first start to the last finish, and
-- the enqueue-to-start latency of each started one, in milliseconds.
SELECT count(*) FILTER (WHERE state = 'succeeded') AS done,
       coalesce(extract(epoch FROM max(finished_at) - min(started_at)), 0)::float8 AS seconds,
       coalesce(array_agg(extract(epoch FROM started_at - created_at)::float8 * 1000
                          ORDER BY started_at - created_at) FILTER (WHERE started_at IS NOT NULL),
                '{}') AS latencies_ms
FROM sched_jobs_all
WHERE id > %(after)s;

-- name: BenchJobsTableSize
-- The job table's dead row versions, its size, its indexes' and its ready index's, in bytes, the last job id
-- handed out, and the history's size with its indexes.
SELECT coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'sched_jobs'::regclass), 0) AS dead,
       pg_table_size('sched_jobs') AS table_bytes,
       pg_indexes_size('sched_jobs') AS index_bytes,
       pg_relation_size('sched_jobs_ready') AS ready_index_bytes,
       -- The sequence, not max(id): while vacuum is held back, a drained table's primary key is all dead entries,
       -- and max(id) walked every one of them (0.2 s a call at 500,000 jobs), loading the database it measures.
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM sched_jobs_id_seq) AS last_id,
       (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
        FROM pg_partition_tree('sched_job_history'::regclass)) AS history_bytes;

-- name: BenchJobsVacuum
-- Vacuum and analyze sched_jobs and the history before a timed drain, so each run starts from the same state.
VACUUM ANALYZE sched_jobs, sched_job_history;

-- name: BenchLatencies
-- Enqueue-to-start latency of every started job of a queue, in milliseconds.
SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 AS ms
FROM sched_jobs_all
WHERE queue = %(queue)s AND started_at IS NOT NULL;

-- name: BenchQueueReady
-- Queued jobs of a queue, before a drain.
SELECT count(*) FROM sched_jobs WHERE state = 'queued' AND queue = %(queue)s;

-- name: BenchQueueWindow
-- Succeeded jobs of a queue, and the seconds from the first start to the last finish.
SELECT count(*) AS done, coalesce(extract(epoch FROM max(finished_at) - min(started_at)), 0)::float8 AS seconds
FROM sched_jobs_all
WHERE queue = %(queue)s AND state = 'succeeded';

-- name: BenchServerVersion
-- The server's version as people write it, for the report.
SELECT current_setting('server_version');

-- name: BenchWorkerRegistered
-- Whether the worker process with this pid has registered.
SELECT EXISTS (SELECT 1 FROM sched_workers WHERE pid = %(pid)s);
