-- Tracing (README, "Tracing"): a job may carry the trace context of the code that added it, so the span of
-- each of its runs joins the producer's trace. The context is a JSON object of propagation fields (W3C
-- traceparent, tracestate), as OpenTelemetry's propagators write them; NULL for a job added outside a trace,
-- which is every job of an installation that does not trace.
--
-- Locks: ADD COLUMN without a default is a catalog change: it takes sched_jobs' ACCESS EXCLUSIVE lock for a
-- moment and neither rewrites nor scans the table (rows written before it read the column as NULL). Claims and
-- adds wait only for that moment (and behind a long transaction holding the table, for at most the migration's
-- lock wait before it lets go and tries again).
ALTER TABLE sched_jobs ADD COLUMN trace_context jsonb;

-- The claim hands each job's trace context to the worker, from JobClaim's own UPDATE and from this function,
-- whose result JobClaim appends: a function's result columns cannot change in place, so it is dropped and made
-- again, unchanged but for the trace_context it returns. Nothing else depends on it; JobClaim names it at each
-- execution. A worker of an earlier release cannot claim once this is applied (its claim expects seven
-- columns): migrate, then restart the workers.
DROP FUNCTION sched_claim_limited(text, text[], integer, uuid);

CREATE FUNCTION sched_claim_limited(p_queue text, p_tasks text[], p_limit integer, p_worker uuid)
RETURNS TABLE (id bigint, task text, payload jsonb, attempt integer, max_attempts integer, timeout_s float8,
               lease bigint, trace_context jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- Index scans, never bitmap scans: an index scan marks the dead entries finished runs leave in the partial
-- index of running jobs (which the count reads) so later scans skip them; a bitmap scan revisits every one
-- until vacuum, and each claim would cost more than the last.
SET enable_bitmapscan = off
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
    visits integer;
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
    -- Groups visited in turn: enough for the jobs asked for at group_concurrency each, and at least 64 so a
    -- claim spreads over many groups, never more than the jobs asked for.
    visits := least(n, greatest(64, n / coalesce(q.group_concurrency, 1) + 1));
    -- 3. Take jobs in claim order (docs/protocol.md, "Claim"), and for a queue with a per-group limit, in turns
    --    between groups ("Fair sharing"). Candidates come from
    --    - the head of the queue: the ready index in claim order, skipping groups at their limit while reading
    --      it, and the earliest due deferred rows, as JobClaim reads them: n rows of each, which is all a queue
    --      without a per-group limit can take; with one, the turns below supply the groups' jobs;
    --    - for a per-group limit, the head of the next groups after the queue's cursor (rr_group), in name order
    --      and round again from the first: a skip scan of sched_jobs_ready_group, one probe per group, as many
    --      groups as the claim needs (see visits) plus those at their limit, so the cost follows the claim, not
    --      the groups;
    --      from each, its free slots but no more than its share of the claim (what is left goes to the next).
    --    Within a priority, every group's first job comes before any group's second, a group at most taking
    --    its free slots; the cursor moves to the last group served, so the next claim starts after it.
    --    Candidates are then locked; a row locked elsewhere is skipped, which can only take fewer jobs.
    RETURN QUERY
    WITH RECURSIVE cursor_groups (g, pos, id, priority, run_at) AS (
        -- The first index entry of a group is its head, the job it would run first: the skip scan finds it.
        (SELECT r.group_name::text, 1, r.id, r.priority::int, r.run_at FROM sched_jobs r
         WHERE q.group_concurrency IS NOT NULL AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
           AND r.group_name IS NOT NULL AND r.group_name > coalesce(q.rr_group, '')
         ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
        UNION ALL
        SELECT nx.g, c.pos + 1, nx.id, nx.priority, nx.run_at
        FROM cursor_groups c,
             LATERAL (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                      WHERE r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue AND r.group_name IS NOT NULL
                        AND r.group_name > c.g
                      ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1) nx
        WHERE c.pos < visits + cardinality(full_groups)
    ),
    first_groups (g, pos, id, priority, run_at) AS (
        (SELECT r.group_name::text, 1, r.id, r.priority::int, r.run_at FROM sched_jobs r
         WHERE q.group_concurrency IS NOT NULL AND q.rr_group IS NOT NULL AND r.state = 'queued' AND NOT r.deferred
           AND r.queue = p_queue AND r.group_name IS NOT NULL AND r.group_name <= q.rr_group
         ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
        UNION ALL
        SELECT nx.g, f.pos + 1, nx.id, nx.priority, nx.run_at
        FROM first_groups f,
             LATERAL (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                      WHERE r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue AND r.group_name IS NOT NULL
                        AND r.group_name > f.g AND r.group_name <= q.rr_group
                      ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1) nx
        WHERE f.pos < visits + cardinality(full_groups)
    ),
    -- The jobs without a group take one turn together, after the last group and before the first.
    turns AS (
        SELECT t.g, t.pos, t.id, t.priority, t.run_at FROM (
            SELECT c.g, c.pos, c.id, c.priority, c.run_at FROM cursor_groups c
            UNION ALL
            SELECT NULL, 1000000, NULL, NULL, NULL WHERE q.group_concurrency IS NOT NULL
            UNION ALL
            SELECT f.g, 1000000 + f.pos, f.id, f.priority, f.run_at FROM first_groups f
        ) t
        WHERE t.g IS NULL OR t.g <> ALL(full_groups)
        ORDER BY t.pos
        LIMIT visits + 1
    ),
    candidates AS (
        (SELECT j.id, j.group_name::text AS g, j.priority, j.run_at FROM sched_jobs j
         WHERE j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
           AND j.task = ANY(p_tasks)
           AND (q.group_concurrency IS NULL OR j.group_name IS NULL OR j.group_name <> ALL(full_groups))
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT n)
        UNION
        (SELECT j.id, j.group_name::text, j.priority, j.run_at FROM sched_jobs j
         WHERE j.id = ANY(ARRAY(SELECT d.id FROM sched_jobs d
                                WHERE d.state = 'queued' AND d.deferred AND d.queue = p_queue AND d.run_at <= now()
                                  AND d.task = ANY(p_tasks)
                                ORDER BY d.run_at, d.id
                                LIMIT 1000))
           AND j.state = 'queued' AND j.deferred
           AND (q.group_concurrency IS NULL OR j.group_name IS NULL OR j.group_name <> ALL(full_groups))
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT n)
        UNION
        -- Each group's next jobs that this worker can run (a group's first index entry, which the skip scan
        -- found, may be of a task this worker lacks: taking it in the group's place would put a later job of
        -- another group before the group's own).
        SELECT h.id, t.g, h.priority, h.run_at
        FROM turns t,
             LATERAL (SELECT r.id, r.priority, r.run_at FROM sched_jobs r
                      WHERE t.g IS NOT NULL
                        AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
                        AND r.group_name = t.g
                        AND r.run_at <= now() AND r.task = ANY(p_tasks)
                      ORDER BY r.priority DESC, r.run_at, r.id
                      LIMIT least(q.group_concurrency - coalesce((per_group ->> t.g)::int, 0),
                                  1 + n / (SELECT count(*) FROM turns))) h
    ),
    ranked AS (
        SELECT c.id, c.g, c.priority, c.run_at, t.pos,
               row_number() OVER (PARTITION BY c.g ORDER BY c.priority DESC, c.run_at, c.id) AS rank
        FROM candidates c
        -- '' stands for no group (a name is never empty): an equality the planner can hash.
        LEFT JOIN turns t ON coalesce(t.g, '') = coalesce(c.g, '')
    ),
    picked AS (
        SELECT r.id, r.g, r.pos FROM ranked r
        WHERE q.group_concurrency IS NULL OR r.g IS NULL
           OR r.rank + coalesce((per_group ->> r.g)::int, 0) <= q.group_concurrency
        ORDER BY r.priority DESC,
                 CASE WHEN q.group_concurrency IS NULL THEN 0 ELSE r.rank END,
                 coalesce(r.pos, 3000000), r.run_at, r.id
        LIMIT n
    ),
    locked AS (
        SELECT j.id FROM sched_jobs j
        WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) AND j.state = 'queued'
          AND j.task = ANY(p_tasks) AND j.run_at <= now()
        FOR UPDATE SKIP LOCKED
    ),
    moved AS (
        -- The cursor moves to the last group served in turn ('' for the jobs without a group: every name is after it).
        UPDATE sched_queues s
        SET rr_group = (SELECT coalesce(p.g, '') FROM picked p WHERE p.pos IS NOT NULL ORDER BY p.pos DESC LIMIT 1)
        WHERE s.queue = p_queue AND q.group_concurrency IS NOT NULL
          AND EXISTS (SELECT 1 FROM picked p WHERE p.pos IS NOT NULL)
    )
    UPDATE sched_jobs j
    SET state = 'running', attempt = j.attempt + 1, worker_id = p_worker, started_at = now(),
        lease = nextval('sched_job_lease_seq')
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
    RETURNING j.id, j.task::text, j.payload::jsonb, j.attempt::int, j.max_attempts::int,
              extract(epoch FROM j.timeout)::float8, j.lease, j.trace_context;
    GET DIAGNOSTICS taken = ROW_COUNT;
    -- 4. Charge the bucket for exactly the jobs taken, as JobClaim does.
    IF q.rate IS NOT NULL THEN
        UPDATE sched_queues s SET tokens = level - taken, refilled_at = greatest(q.refilled_at, clock_timestamp())
        WHERE s.queue = p_queue;
    END IF;
END
$$;
