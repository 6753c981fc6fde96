-- JobClaim's question whether a fair queue's ready jobs have groups no longer walks every group's claimed jobs
-- (docs/protocol.md, "Where a claim starts reading").
--
-- sched_has_grouped_jobs first looks at the last four groups the worker claimed from, from their positions; when
-- none of them has a ready job (the queue is drained, or their backlog ran out) it read sched_jobs_ready_group
-- from the queue's beginning up to its first entry. While vacuum is held back that read walks the dead entry of
-- every grouped job claimed since the horizon, of every group: at 600,000 jobs drained, one call cost about
-- 0.7 s, paid by the last claim of each backlog and by every claim of a worker polling the drained queue.
--
-- Now JobClaim also passes the worker's segments of the ready index, and the question has three steps:
--   1. the last four groups the worker claimed from, from their positions, as before: while a fair queue has a
--      backlog, one of them has a job;
--   2. unless the claim is a full pass, the first ready job where the worker reads the queue (its segments, read
--      as JobClaim reads them, any task): on a drained queue there is none, and the answer is no for the price of
--      a descent per segment (what a claim from positions may pass over, it may pass over here too); when it has
--      a group, yes (a job added to an idle queue). A full pass reads from the beginning, so this step would add
--      a second walk to step 3's;
--   3. every group, as the turns of sched_claim_limited visit them: each group the worker knows from its
--      position (sched_group_head), and the groups between two known names (and before the first, after the
--      last) by a probe bounded by those names, one index descent where there are none. So it walks only the
--      claimed jobs of groups the worker does not know. A worker that knows no group (a full pass) reads the
--      grouped index from the queue's beginning, as before.
-- The six-argument function, which JobClaim of the previous release calls, is steps 1 and 3. And
-- sched_claim_limited keeps generic plans (at the end).
--
-- Locks: replacing a function in place, or a setting of one, takes no lock on any table; a claim running the old
-- body finishes with it.

CREATE FUNCTION sched_has_grouped_jobs(
    p_queue text, p_seg_hi integer[], p_seg_lo integer[], p_seg_run_at timestamptz[], p_seg_id bigint[],
    p_seg_until timestamptz[], p_seg_full boolean, p_groups text[], p_priorities integer[], p_from timestamptz[],
    p_run_ats timestamptz[], p_ids bigint[])
RETURNS boolean
-- PL/pgSQL with generic plans and index-only scans of the grouped index, as in 0013.
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
SET enable_indexscan = off
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    first_group text;
    found_one boolean;
BEGIN
    -- 1. The groups the worker claimed from last.
    IF EXISTS (SELECT 1
               FROM unnest(p_groups[greatest(cardinality(p_groups) - 3, 1):],
                           p_priorities[greatest(cardinality(p_groups) - 3, 1):],
                           p_from[greatest(cardinality(p_groups) - 3, 1):],
                           p_run_ats[greatest(cardinality(p_groups) - 3, 1):],
                           p_ids[greatest(cardinality(p_groups) - 3, 1):]) AS k (g, p, f, r, i)
               CROSS JOIN LATERAL sched_group_head(p_queue, k.g, k.p, k.f, k.r, k.i) AS h) THEN
        RETURN true;
    END IF;
    -- 2. The first ready job where the worker reads the queue: not asked in a full pass, nor without segments.
    --    Its group comes from the table, so index scans are on for this statement (the ready index gives the
    --    order; the function's own SET puts the setting back when it returns).
    IF p_seg_hi IS NOT NULL AND NOT p_seg_full THEN
        PERFORM set_config('enable_indexscan', 'on', true);
        SELECT c.g INTO first_group
        FROM unnest(p_seg_hi, p_seg_lo, p_seg_run_at, p_seg_id, p_seg_until)
            AS s (hi, lo, from_run_at, from_id, until_run_at)
        CROSS JOIN LATERAL (
            (SELECT j.group_name::text AS g FROM sched_jobs j
             WHERE s.hi = s.lo AND j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue
               AND j.run_at <= now() AND j.priority = s.hi
               AND (j.run_at, j.id) >= (s.from_run_at, s.from_id) AND j.run_at < s.until_run_at
             ORDER BY j.run_at, j.id LIMIT 1)
            UNION ALL
            (SELECT j.group_name::text AS g FROM sched_jobs j
             WHERE s.hi > s.lo AND j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue
               AND j.run_at <= now() AND j.priority <= s.hi AND j.priority >= s.lo
             ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1)) AS c
        LIMIT 1;
        found_one := FOUND;  -- before PERFORM, which sets FOUND again
        PERFORM set_config('enable_indexscan', 'off', true);
        IF NOT found_one THEN
            RETURN false;
        ELSIF first_group IS NOT NULL THEN
            RETURN true;
        END IF;
    END IF;
    -- 3. Every group: one row per known name (with the name before it) and one for the names after the last. Each
    --    row probes the names between the one before and its own ('' is before every name: a name is never
    --    empty), then reads its group from the position. No known name: one row, which reads the queue's grouped
    --    jobs from their beginning.
    RETURN EXISTS (
        SELECT 1
        FROM (SELECT k.g, k.p, k.f, k.r, k.i, coalesce(lag(k.g) OVER (ORDER BY k.g), '') AS before
              FROM (SELECT DISTINCT ON (k.g) k.g, k.p, k.f, k.r, k.i
                    FROM unnest(p_groups, p_priorities, p_from, p_run_ats, p_ids) AS k (g, p, f, r, i)
                    WHERE k.g IS NOT NULL ORDER BY k.g) k
              UNION ALL
              SELECT NULL, NULL, NULL, NULL, NULL, coalesce(max(k.g), '') FROM unnest(p_groups) AS k (g)) k
        CROSS JOIN LATERAL (
            SELECT 1 FROM (
                (SELECT r.id FROM sched_jobs r
                 WHERE k.g IS NOT NULL AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
                   AND r.group_name > k.before AND r.group_name < k.g
                 ORDER BY r.group_name LIMIT 1)
                UNION ALL
                (SELECT r.id FROM sched_jobs r
                 WHERE k.g IS NULL AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
                   AND r.group_name > k.before
                 ORDER BY r.group_name LIMIT 1)
                UNION ALL
                (SELECT h.id FROM sched_group_head(p_queue, k.g, k.p, k.f, k.r, k.i) AS h
                 WHERE k.g IS NOT NULL LIMIT 1)
            ) AS x LIMIT 1) AS found);
END
$$;

-- The previous release's question: steps 1 and 3.
CREATE OR REPLACE FUNCTION sched_has_grouped_jobs(p_queue text, p_groups text[], p_priorities integer[],
                                                  p_from timestamptz[], p_run_ats timestamptz[], p_ids bigint[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT sched_has_grouped_jobs(p_queue, NULL, NULL, NULL, NULL, NULL, true, p_groups, p_priorities, p_from,
                                  p_run_ats, p_ids)
$$;

-- The limited claim keeps one plan per statement for the session. PL/pgSQL planned its statements again at every
-- call (its choice between a generic plan and one made for the call's values kept choosing the latter, as it
-- did for sched_has_grouped_jobs): about 5 ms a claim, most of a claim of a few jobs (a job added to an idle
-- fair queue: 8.0 ms a claim before, 3.1 ms after, measured with EXPLAIN ANALYZE on a vacuumed queue of 100
-- groups), and within noise for a claim of 500. Its statements' paths are fixed by its settings (index scans of
-- the partial indexes, no sorts), so a plan made without the values reads the same indexes.
ALTER FUNCTION sched_claim_limited(text, text[], integer, uuid, integer[], integer[], timestamptz[], bigint[],
                                   timestamptz[], boolean, text[], integer[], timestamptz[], timestamptz[], bigint[])
    SET plan_cache_mode = force_generic_plan;
