-- Concurrency limits per queue: at most max_running running jobs of the queue across all workers, and at most
-- group_concurrency running jobs per group (docs/protocol.md, "Concurrency limits").
--
-- A count of running jobs read on a claim's snapshot is not enough: two claimers that start together each see
-- the other's claim as still queued and both take the last slot. So a claim of a limited queue first locks the
-- queue's row, which every claimer of that queue takes, and only then counts, in a statement of its own whose
-- snapshot (READ COMMITTED: one per statement) is newer than the lock: every claim that held the lock before
-- has committed by then and is counted. Runs that end concurrently are at worst still counted: a claim may take
-- fewer jobs, never more. Nothing but the claim has to keep a counter: a run that ends in any way (an outcome,
-- a release, the reaper, a retry) leaves the running state, and the next count sees its slot free.
--
-- The two statements run inside one function, so the claim stays one round trip and one statement for the
-- worker (JobClaim calls it only for a queue with a limit). Its names resolve in the installation's schema
-- whoever calls it (SET search_path FROM CURRENT: the schema this migration runs in).
--
-- Locks: adding nullable columns without defaults to sched_queues only changes the catalog.

ALTER TABLE sched_queues
    ADD COLUMN max_running integer,
    ADD COLUMN group_concurrency integer,
    ADD CONSTRAINT sched_queues_max_running_range CHECK (max_running IS NULL OR max_running >= 1),
    ADD CONSTRAINT sched_queues_group_concurrency_range CHECK (group_concurrency IS NULL OR group_concurrency >= 1);

CREATE FUNCTION sched_claim_limited(p_queue text, p_tasks text[], p_limit integer, p_worker uuid)
RETURNS TABLE (id bigint, task text, payload jsonb, attempt integer, max_attempts integer, timeout_s float8,
               lease bigint)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    q sched_queues;
    level float8;
    n integer := p_limit;
    running_total integer;
    per_group jsonb;
    full_groups text[];
    taken integer;
BEGIN
    -- 1. Take the queue's turn. A claimer that waited here gets the row's newest version (a pause, a new limit
    --    or a charge of the bucket committed while it waited).
    SELECT * INTO q FROM sched_queues s WHERE s.queue = p_queue FOR UPDATE;
    IF NOT FOUND OR q.paused THEN
        RETURN;
    END IF;
    IF q.rate IS NOT NULL THEN
        level := least(q.burst, q.tokens + q.rate * greatest(0, extract(epoch FROM clock_timestamp() - q.refilled_at)));
        n := least(n, floor(level)::int);
    END IF;
    -- 2. Count on a snapshot taken after the lock: every earlier claim of this queue has committed. The running
    --    set is small (it is bounded by the workers' slots) and read through its partial index.
    SELECT coalesce(sum(c.n), 0)::int,
           coalesce(jsonb_object_agg(c.g, c.n) FILTER (WHERE c.g IS NOT NULL), '{}'),
           coalesce(array_agg(c.g) FILTER (WHERE c.g IS NOT NULL AND c.n >= q.group_concurrency), '{}')
    INTO running_total, per_group, full_groups
    FROM (SELECT j.group_name::text AS g, count(*)::int AS n FROM sched_jobs j
          WHERE j.state = 'running' AND j.queue = p_queue
          GROUP BY j.group_name) c;
    IF q.max_running IS NOT NULL THEN
        n := least(n, q.max_running - running_total);
    END IF;
    IF n <= 0 THEN
        RETURN;
    END IF;
    -- 3. Take jobs in claim order (docs/protocol.md, "Claim"), skipping groups at their limit while reading the
    --    index, and at most the free slots of each other group. Jobs are read from the ready index and from
    --    the earliest due deferred rows, as JobClaim does, then locked; a row locked elsewhere is skipped, which
    --    can only take fewer jobs.
    RETURN QUERY
    WITH candidates AS (
        (SELECT j.id, j.group_name::text AS g, j.priority, j.run_at FROM sched_jobs j
         WHERE j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
           AND j.task = ANY(p_tasks)
           AND (q.group_concurrency IS NULL OR j.group_name IS NULL OR j.group_name <> ALL(full_groups))
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT n * 4)
        UNION ALL
        (SELECT j.id, j.group_name::text, j.priority, j.run_at FROM sched_jobs j
         WHERE j.id = ANY(ARRAY(SELECT d.id FROM sched_jobs d
                                WHERE d.state = 'queued' AND d.deferred AND d.queue = p_queue AND d.run_at <= now()
                                  AND d.task = ANY(p_tasks)
                                ORDER BY d.run_at, d.id
                                LIMIT 1000))
           AND j.state = 'queued' AND j.deferred
           AND (q.group_concurrency IS NULL OR j.group_name IS NULL OR j.group_name <> ALL(full_groups))
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT n * 4)
    ),
    ranked AS (
        SELECT c.id, c.g, c.priority, c.run_at,
               row_number() OVER (PARTITION BY c.g ORDER BY c.priority DESC, c.run_at, c.id) AS rank
        FROM candidates c
    ),
    picked AS (
        SELECT r.id FROM ranked r
        WHERE q.group_concurrency IS NULL OR r.g IS NULL
           OR r.rank + coalesce((per_group ->> r.g)::int, 0) <= q.group_concurrency
        ORDER BY r.priority DESC, r.run_at, r.id
        LIMIT n
    ),
    locked AS (
        SELECT j.id FROM sched_jobs j
        WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) AND j.state = 'queued'
        FOR UPDATE SKIP LOCKED
    )
    UPDATE sched_jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = p_worker, started_at = now(),
        lease = nextval('sched_job_lease_seq')
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
    RETURNING j.id, j.task::text, j.payload::jsonb, j.attempt::int, j.max_attempts::int,
              extract(epoch FROM j.timeout)::float8, j.lease;
    GET DIAGNOSTICS taken = ROW_COUNT;
    -- 4. Charge the bucket for exactly the jobs taken, as JobClaim does.
    IF q.rate IS NOT NULL THEN
        UPDATE sched_queues s SET tokens = level - taken, refilled_at = greatest(q.refilled_at, clock_timestamp())
        WHERE s.queue = p_queue;
    END IF;
END
$$;
