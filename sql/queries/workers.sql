-- Queries on the worker registry: registration with a liveness contract, heartbeats, listing.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: WorkerDeleteStale
-- Forget workers that stopped beating, each by its own contract; their jobs were requeued by JobReap.
DELETE FROM sched_workers WHERE heartbeat_at <= now() - stale_after
RETURNING id;

-- name: WorkerDeregister
-- A worker leaves cleanly.
DELETE FROM sched_workers WHERE id = %(id)s;

-- name: WorkerHeartbeat
-- Keep the worker alive and publish how many jobs it runs; returns nothing if the worker was reaped.
UPDATE sched_workers SET heartbeat_at = now(), running = %(running)s
WHERE id = %(id)s
RETURNING id;

-- name: WorkerList
-- Registered workers with the age of their last heartbeat.
SELECT id::text AS id, host, pid, queues, concurrency, running,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
FROM sched_workers
ORDER BY host, pid;

-- name: WorkerRegister
-- A worker announces itself, and the liveness contract it will be judged by, before claiming anything; it learns
-- the isolation its statements run at (the role's or database's default_transaction_isolation).
INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, stale_after, timeout_grace)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(tasks)s, %(concurrency)s,
        make_interval(secs => %(stale_after_s)s::float8), make_interval(secs => %(timeout_grace_s)s::float8))
RETURNING current_setting('transaction_isolation') AS isolation;
