-- Queries on queue controls: pause, rate limit (token bucket), backlog cap, concurrency limits, wake-ups and
-- listings.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: QueueAdmitLock
-- Admission control for an add: lock a capped queue's row, so concurrent adds take turns, and return its cap.
-- Returns nothing for a queue without a cap, which is the common case and locks nothing. An UPDATE (that
-- changes nothing) rather than SELECT FOR UPDATE: it makes a new row version, so a producer in a REPEATABLE
-- READ transaction whose snapshot predates another add's commit fails with a serialization error instead of
-- counting the backlog on that older snapshot (docs/protocol.md, "Queue controls").
UPDATE sched_queues SET updated_at = updated_at
WHERE queue = %(queue)s AND max_backlog IS NOT NULL
RETURNING max_backlog;

-- name: QueueControlList
-- Paused and rate-limited queues, for marking them on the dashboard.
SELECT queue, paused, rate FROM sched_queues WHERE paused OR rate IS NOT NULL ORDER BY queue;

-- name: QueueCountQueued
-- A capped queue's queued jobs, counted after taking its lock: a statement of its own, so that its snapshot
-- includes the jobs of the add that held the lock before.
SELECT count(*) FROM sched_jobs WHERE queue = %(queue)s AND state = 'queued';

-- name: QueueDeleteUnconfigured
-- Drop a queue's row once it holds no setting, so its claims go back to the no-row path.
DELETE FROM sched_queues
WHERE queue = %(queue)s AND NOT paused AND rate IS NULL AND max_backlog IS NULL AND max_running IS NULL
  AND group_concurrency IS NULL AND group_rate IS NULL AND fair;

-- name: QueueFlowWait
-- What a worker whose claim found nothing in these queues waits for (docs/protocol.md, "When a held-back worker
-- looks again"): whether any has flow control at all; whether any caps its running jobs, whose slots free when
-- runs end; and the seconds until the first bucket that had no whole token when the claim started (%(since)s
-- seconds ago) has one: the queue's bucket, or the first of its groups' buckets, read from that moment on, so the
-- rows of older charges are never walked. It may be negative: a token that came while the claim ran. A queue
-- bucket keeps its level as of its last refill, and a claim that found a token there refilled it (unless the
-- queue's cap stopped it first): one left with a whole token says the rate was not what held the claim back.
SELECT coalesce(bool_or(q.rate IS NOT NULL OR q.group_rate IS NOT NULL OR q.max_running IS NOT NULL
                        OR q.group_concurrency IS NOT NULL), false) AS controlled,
       coalesce(bool_or((q.max_running IS NOT NULL OR q.group_concurrency IS NOT NULL) AND NOT q.paused), false)
           AS capped,
       extract(epoch FROM min(least(
           CASE WHEN q.rate IS NOT NULL AND NOT q.paused AND q.tokens < 1
                     AND q.refilled_at + make_interval(secs => (1 - q.tokens) / q.rate) > claim.at
               THEN q.refilled_at + make_interval(secs => (1 - q.tokens) / q.rate)
           END,
           CASE WHEN q.group_rate IS NOT NULL AND NOT q.paused THEN
               (SELECT b.full_at - make_interval(secs => (q.group_burst - 1) / q.group_rate)
                FROM sched_group_buckets b
                WHERE b.queue = q.queue
                  AND b.full_at > claim.at + make_interval(secs => (q.group_burst - 1) / q.group_rate)
                ORDER BY b.full_at LIMIT 1)
           END)) - clock_timestamp())::float8 AS token_in
FROM sched_queues q
CROSS JOIN (SELECT clock_timestamp() - make_interval(secs => %(since)s) AS at) AS claim
WHERE q.queue = ANY(%(queues)s::text[]);

-- name: QueueGroupBucketsDelete
-- Drop a queue's group buckets (all full again), when its group rate is set, changed or removed.
DELETE FROM sched_group_buckets WHERE queue = %(queue)s;

-- name: QueueHeldBack
-- Ready jobs of a queue that its limits hold back, for metrics: all of them while the queue is at its
-- max_running, those of groups at their group_concurrency (docs/protocol.md, "Concurrency limits"), and those
-- of groups whose bucket is empty ("Group rates": an index range of the buckets, then each such group's jobs).
-- No row for a queue without limits, which reads nothing more.
SELECT CASE WHEN q.max_running IS NOT NULL
                 AND (SELECT count(*) FROM sched_jobs r WHERE r.state = 'running' AND r.queue = q.queue)
                     >= q.max_running
            THEN (SELECT count(*) FROM sched_jobs j
                  WHERE j.state = 'queued' AND j.queue = q.queue AND j.run_at <= now())
            ELSE 0 END AS by_max_running,
       (SELECT count(*) FROM sched_jobs j
        WHERE q.group_concurrency IS NOT NULL AND j.state = 'queued' AND NOT j.deferred AND j.queue = q.queue
          AND j.group_name IS NOT NULL
          AND j.group_name IN (SELECT r.group_name FROM sched_jobs r
                               WHERE r.state = 'running' AND r.queue = q.queue AND r.group_name IS NOT NULL
                               GROUP BY r.group_name
                               HAVING count(*) >= q.group_concurrency)) AS by_group_concurrency,
       (SELECT count(*) FROM (SELECT DISTINCT b.queue, b.group_name FROM sched_group_buckets b
                              WHERE q.group_rate IS NOT NULL AND b.queue = q.queue
                                AND b.full_at > now() + make_interval(secs => (q.group_burst - 1) / q.group_rate)) b
        JOIN sched_jobs j ON j.state = 'queued' AND NOT j.deferred AND j.queue = b.queue
                         AND j.group_name = b.group_name) AS by_group_rate
FROM sched_queues q
WHERE q.queue = %(queue)s
  AND (q.max_running IS NOT NULL OR q.group_concurrency IS NOT NULL OR q.group_rate IS NOT NULL);

-- name: QueueList
-- Every queue that has jobs or settings, with its settings, current bucket level and backlog, and how many of
-- its group buckets are refilling (the groups charged within the last burst / rate seconds).
WITH names AS (
    SELECT queue FROM sched_queues
    UNION
    SELECT DISTINCT queue FROM sched_jobs WHERE state IN ('waiting', 'queued', 'running')
)
SELECT n.queue, coalesce(q.paused, false) AS paused, q.rate, q.burst,
       least(q.burst, q.tokens + q.rate * greatest(0, extract(epoch FROM clock_timestamp() - q.refilled_at)))
           AS tokens,
       q.max_backlog, q.max_running, q.group_concurrency, q.group_rate, q.group_burst, coalesce(q.fair, true) AS fair,
       (SELECT count(DISTINCT b.group_name) FROM sched_group_buckets b
        WHERE q.group_rate IS NOT NULL AND b.queue = n.queue AND b.full_at > now()) AS group_buckets,
       (SELECT count(*) FROM sched_jobs j WHERE j.queue = n.queue AND j.state = 'queued') AS queued,
       (SELECT count(*) FROM sched_jobs j WHERE j.queue = n.queue AND j.state = 'running') AS running
FROM names n
LEFT JOIN sched_queues q ON q.queue = n.queue
ORDER BY n.queue;

-- name: QueueNotifyMany
-- One wake-up per queue, not one per row: now, or at the moment given in %(ats)s (a bulk insert names its
-- earliest deferred job's, which workers remember, as for a single deferred job); a queue without a moment (or
-- %(ats)s NULL) means now.
SELECT pg_notify('sched_wakeup', n.q || ' ' || extract(epoch FROM coalesce(n.at, now()))::text)
FROM unnest(%(queues)s::text[], %(ats)s::timestamptz[]) AS n(q, at);

-- name: QueueRateLimitedBacklog
-- Whether flow control (a rate, the queue's or its groups', or a cap on running jobs that others' runs fill) and
-- not a pause is all that holds back ready jobs of these queues and tasks, so a burst worker waits for tokens or
-- slots instead of exiting.
SELECT EXISTS (
    SELECT 1 FROM sched_queues q
    WHERE q.queue = ANY(%(queues)s::text[]) AND NOT q.paused
      AND (q.rate IS NOT NULL OR q.group_rate IS NOT NULL OR q.max_running IS NOT NULL
           OR q.group_concurrency IS NOT NULL)
      AND EXISTS (SELECT 1 FROM sched_jobs j
                  WHERE j.state = 'queued' AND j.queue = q.queue AND j.run_at <= now()
                    AND j.task = ANY(%(tasks)s::text[]))
);

-- name: QueueReadyDepth
-- Ready jobs of one queue and the age of the oldest, for metrics; served by the claim's partial index.
SELECT count(*), coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8
FROM sched_jobs
WHERE state = 'queued' AND queue = %(queue)s AND run_at <= now();

-- name: QueueSetConcurrency
-- Set (or with NULL remove) a queue's limits on running jobs: in all, and per group. Claims take the queue's
-- row from their next statement on (docs/protocol.md, "Concurrency limits"). On a queue that had no limit, the
-- count's floor goes back to the beginning: its claims took no lock and kept no count, and their runs must be
-- counted; updated_at keeps the floor from moving for 60 s, while claims that started before the limit commit
-- ("Where the count starts reading").
INSERT INTO sched_queues (queue, max_running, group_concurrency, updated_at)
VALUES (%(queue)s, %(max_running)s, %(group_concurrency)s, clock_timestamp())
ON CONFLICT (queue) DO UPDATE
SET max_running = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running ELSE sched_queues.max_running END,
    group_concurrency = CASE WHEN %(set_group_concurrency)s THEN EXCLUDED.group_concurrency
                             ELSE sched_queues.group_concurrency END,
    running_floor = CASE WHEN sched_queues.max_running IS NULL AND sched_queues.group_concurrency IS NULL THEN NULL
                         ELSE sched_queues.running_floor END,
    running_below = CASE WHEN sched_queues.max_running IS NULL AND sched_queues.group_concurrency IS NULL THEN '{}'
                         ELSE sched_queues.running_below END,
    -- The moment the row is written (after any wait for its lock), not the transaction's start.
    updated_at = clock_timestamp();

-- name: QueueSetFair
-- Turn fair sharing between groups on (the default) or off for a queue (docs/protocol.md, "Fair sharing").
INSERT INTO sched_queues (queue, fair) VALUES (%(queue)s, %(fair)s)
ON CONFLICT (queue) DO UPDATE SET fair = EXCLUDED.fair, updated_at = now();

-- name: QueueSetGroupRate
-- Set (or with a NULL rate, remove) the token bucket each group of a queue gets (docs/protocol.md, "Group
-- rates"); with QueueGroupBucketsDelete in the same transaction every bucket starts full.
INSERT INTO sched_queues (queue, group_rate, group_burst) VALUES (%(queue)s, %(rate)s, %(burst)s)
ON CONFLICT (queue) DO UPDATE
SET group_rate = EXCLUDED.group_rate, group_burst = EXCLUDED.group_burst, updated_at = now();

-- name: QueueSetMaxBacklog
-- Set (or with NULL remove) a queue's admission limit.
INSERT INTO sched_queues (queue, max_backlog) VALUES (%(queue)s, %(max_backlog)s)
ON CONFLICT (queue) DO UPDATE SET max_backlog = EXCLUDED.max_backlog, updated_at = now();

-- name: QueueSetPaused
-- Pause or resume a queue; claims see it from their next statement on. Resuming wakes the queue's workers (the
-- NOTIFY goes out when the change commits), so its waiting jobs start now rather than at their next poll.
WITH changed AS (
    INSERT INTO sched_queues (queue, paused) VALUES (%(queue)s, %(paused)s)
    ON CONFLICT (queue) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING queue, paused
)
SELECT pg_notify('sched_wakeup', queue) FROM changed WHERE NOT paused;

-- name: QueueSetRate
-- Set (or with a NULL rate, remove) a queue's token bucket; a new bucket starts full.
INSERT INTO sched_queues (queue, rate, burst, tokens, refilled_at)
VALUES (%(queue)s, %(rate)s, %(burst)s, %(burst)s, CASE WHEN %(rate)s::float8 IS NOT NULL THEN now() END)
ON CONFLICT (queue) DO UPDATE
SET rate = EXCLUDED.rate, burst = EXCLUDED.burst, tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at,
    updated_at = now();
