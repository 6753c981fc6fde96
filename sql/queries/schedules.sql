-- Queries on recurring schedules: upserting, listing, and firing due ticks exactly once.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: ScheduleDelete
-- Remove a schedule; jobs it already enqueued stay.
DELETE FROM sched_schedules WHERE name = %(name)s RETURNING name;

-- name: ScheduleFire
-- Enqueue a schedule's due ticks and advance it, in one statement. The update matches only if the row is
-- still at the tick the caller read and every tick is later than the last one fired: the database, not
-- the caller's care, makes each tick enqueue at most one job. The dedupe key names the tick.
WITH fired AS (
    UPDATE sched_schedules
    SET next_run_at = %(next_run_at)s,
        last_tick = coalesce((SELECT max(t) FROM unnest(%(ticks)s::timestamptz[]) AS t), last_tick),
        updated_at = now()
    WHERE name = %(name)s AND next_run_at = %(due_at)s
      AND (last_tick IS NULL OR last_tick < ALL(%(ticks)s::timestamptz[]))
    RETURNING name, task, queue, payload
),
ins AS (
    INSERT INTO sched_jobs (queue, task, payload, run_at, dedupe_key)
    SELECT f.queue, f.task, f.payload, t.tick,
           'schedule:' || f.name || ':' || to_char(t.tick AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    FROM fired f, unnest(%(ticks)s::timestamptz[]) AS t(tick)
    ORDER BY t.tick
    ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('waiting', 'queued', 'running')
    DO NOTHING
    RETURNING id, queue
)
SELECT (SELECT count(*) FROM fired) AS advanced,
       (SELECT count(*) FROM ins) AS enqueued,
       (SELECT count(*) FROM (SELECT pg_notify('sched_wakeup', q || ' ' || extract(epoch FROM now())::text)
                              FROM (SELECT DISTINCT queue AS q FROM ins) d) n) AS notified;

-- name: ScheduleList
-- Every schedule, by name.
SELECT name, cron, tz, task, queue, payload, catch_up, source, next_run_at, last_tick, created_at
FROM sched_schedules
ORDER BY name;

-- name: ScheduleListDue
-- Lock the schedules whose next tick has come; SKIP LOCKED lets concurrent tickers split them, and a
-- ticker that sees a row only after another advanced it re-checks next_run_at and skips it.
SELECT name, cron, tz, catch_up, next_run_at, last_tick, now()
FROM sched_schedules
WHERE next_run_at <= now()
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: ScheduleUpsert
-- Create or replace an operator's schedule; the monotonic last_tick survives a replace, so re-adding a
-- schedule can never fire a tick twice.
INSERT INTO sched_schedules (name, cron, tz, task, queue, payload, catch_up, source, next_run_at)
VALUES (%(name)s, %(cron)s, %(tz)s, %(task)s, %(queue)s, %(payload)s::jsonb, %(catch_up)s, 'cli', %(next_run_at)s)
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, task = EXCLUDED.task, queue = EXCLUDED.queue,
    payload = EXCLUDED.payload, catch_up = EXCLUDED.catch_up, source = 'cli',
    next_run_at = EXCLUDED.next_run_at, updated_at = now()
RETURNING (xmax = 0) AS created;

-- name: ScheduleUpsertCodeMany
-- Record the schedules handlers declare in code (run by every worker at start). An operator's schedule of
-- the same name wins; an unchanged expression keeps its next run, so restarting workers skips no tick.
INSERT INTO sched_schedules AS s (name, cron, tz, task, queue, payload, catch_up, source, next_run_at)
SELECT name, cron, tz, task, queue, '{}', catch_up, 'code', next_run_at
FROM unnest(%(names)s::text[], %(crons)s::text[], %(tzs)s::text[], %(tasks)s::text[], %(queues)s::text[],
            %(catch_ups)s::text[], %(next_run_ats)s::timestamptz[])
     AS c(name, cron, tz, task, queue, catch_up, next_run_at)
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, task = EXCLUDED.task, queue = EXCLUDED.queue,
    catch_up = EXCLUDED.catch_up,
    next_run_at = CASE WHEN s.cron = EXCLUDED.cron AND s.tz = EXCLUDED.tz THEN s.next_run_at
                       ELSE EXCLUDED.next_run_at END,
    updated_at = now()
WHERE s.source = 'code'
  AND (s.cron, s.tz, s.task, s.queue, s.catch_up)
      IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.tz, EXCLUDED.task, EXCLUDED.queue, EXCLUDED.catch_up)
RETURNING s.name;
