-- The count of a limited queue's running jobs no longer walks every job run since the vacuum horizon
-- (docs/protocol.md, "Concurrency limits").
--
-- A claim of a queue with max_running or group_concurrency counts the queue's running jobs (step 2 of
-- sched_claim_limited). It read sched_jobs_running, the partial index of running jobs by worker, which keeps an
-- entry for every run, of every queue, until vacuum removes it: while a long transaction holds the horizon back,
-- each count walked every job run since, and each claim cost more than the last.
--
-- Now the count reads sched_jobs_running_queue, the running jobs by queue and started_at (the moment the claim
-- that started each run read its clock after the queue's lock; claims of a limited queue follow each other, so
-- the moments go forward with them), from a floor kept in the queue's row (running_floor) on, plus the jobs
-- that were running below the floor when it moved (running_below, looked up by primary key). The floor moves to
-- the claim's moment when the walk from it got long, so the walk covers only the runs started since the last
-- move; it does not move in the first 60 s after the queue's settings changed, so that a claim whose statement
-- started before a limit was set (and so took no lock) has committed before the floor passes its jobs. The
-- count is sched_queue_running, and the claim's step 2 reads it; the rest of sched_claim_limited is as in 0015.
-- The lease is not the order: its sequence hands each session 64 values at a time, so a later claim can draw a
-- smaller lease than an earlier one.
--
-- Locks: the index is built under a SHARE lock on sched_jobs (adds, claims and outcomes wait while it is built;
-- the build reads the table, but its entries are only the running jobs). Adding columns with constant defaults
-- to sched_queues is a catalog change under a brief ACCESS EXCLUSIVE lock (claims of limited queues wait for it).
-- Creating a function and replacing one in place take no lock on any table; a claim running the old body
-- finishes with it.

ALTER TABLE sched_queues
    ADD COLUMN running_floor timestamptz,
    ADD COLUMN running_below bigint[] NOT NULL DEFAULT '{}';

CREATE INDEX sched_jobs_running_queue ON sched_jobs (queue, started_at) WHERE state = 'running';

-- The running jobs of p_queue, per group (NULL: the jobs without a group), as step 2 of sched_claim_limited
-- counts them: called under the queue's row lock, by the claim whose moment is p_now, on a snapshot taken after
-- the lock (every earlier claim of the queue has committed). The running jobs started at or after the floor are
-- read by a range of sched_jobs_running_queue, which also walks the entries runs left since the floor while
-- vacuum is held back; those started before it are the ids of running_below still running there since before the
-- floor (primary-key lookups). A full pass (p_full) reads the whole range instead, which counts, and puts back
-- in running_below, a job a claim that took no lock started below the floor. The row changes only when
--   - the walk passed more than max(500, twice the running jobs) entries (read from the statistics this
--     session keeps for the index, which count every entry a scan returns, dead or alive; once a second in a
--     session that keeps none, track_counts off) and the queue's settings last changed more than 60 s ago: the
--     floor moves to p_now and running_below becomes the running jobs started before it;
--   - the clock went back past the floor: the floor moves back to p_now, so this claim's runs are above it;
--   - a full pass found a running job below the floor that running_below lacks.
-- So the count costs the running jobs plus the entries of at most a few claims, however long the horizon is
-- held, and the row takes a new version once every few claims, not at each.
CREATE FUNCTION sched_queue_running(p_queue text, p_full boolean, p_now timestamptz)
RETURNS TABLE (group_name text, n integer)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- As in sched_claim_limited: index scans (which mark the entries of finished runs that no snapshot can see any
-- more, so that later scans skip them), never a scan of the whole table, no JIT.
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    floor_at timestamptz;
    below bigint[];
    settled boolean;
    walked bigint;
    walk_ids bigint[];
    walk_groups text[];
    walk_starts timestamptz[];
    below_ids bigint[] := '{}';
    below_groups text[] := '{}';
    moves boolean;
    lowered boolean := false;
    missing boolean := false;
BEGIN
    SELECT s.running_floor, s.running_below, s.updated_at <= p_now - interval '60 seconds'
    INTO floor_at, below, settled
    FROM sched_queues s WHERE s.queue = p_queue;
    IF floor_at > p_now THEN
        floor_at := p_now;
        lowered := true;
    END IF;
    walked := pg_stat_get_xact_tuples_returned('sched_jobs_running_queue'::regclass);
    SELECT coalesce(array_agg(j.id), '{}'), coalesce(array_agg(j.group_name::text), '{}'),
           coalesce(array_agg(j.started_at), '{}')
    INTO walk_ids, walk_groups, walk_starts
    FROM sched_jobs j
    WHERE j.state = 'running' AND j.queue = p_queue
      AND j.started_at >= CASE WHEN p_full THEN '-infinity' ELSE coalesce(floor_at, '-infinity') END;
    walked := pg_stat_get_xact_tuples_returned('sched_jobs_running_queue'::regclass) - walked;
    IF p_full THEN
        -- The walk read every running job; running_below should hold those started before the floor.
        missing := EXISTS (SELECT 1 FROM unnest(walk_ids, walk_starts) AS w (id, started_at)
                           WHERE w.started_at < floor_at AND w.id <> ALL(below));
    ELSIF floor_at IS NOT NULL AND cardinality(below) > 0 THEN
        -- By primary key: "j.state::text" keeps the planner off the partial indexes of running jobs, which its
        -- generic plan otherwise took, reading every entry before the floor. started_at before the floor: a job
        -- run again since the floor moved is counted by the walk, not twice.
        SELECT coalesce(array_agg(j.id), '{}'), coalesce(array_agg(j.group_name::text), '{}')
        INTO below_ids, below_groups
        FROM sched_jobs j
        WHERE j.id = ANY(below) AND j.state::text = 'running' AND j.queue = p_queue AND j.started_at < floor_at;
    END IF;
    -- A session that keeps no statistics (track_counts off) reads no walk: the floor then moves once a second.
    moves := settled AND CASE WHEN current_setting('track_counts')::boolean
                              THEN walked > greatest(500, 2 * (cardinality(walk_ids) + cardinality(below_ids)))
                              ELSE floor_at IS NULL OR floor_at < p_now - interval '1 second' END;
    IF moves OR lowered OR missing THEN
        IF moves THEN
            floor_at := p_now;
        END IF;
        UPDATE sched_queues s
        SET running_floor = floor_at,
            running_below = below_ids || ARRAY(SELECT w.id FROM unnest(walk_ids, walk_starts) AS w (id, started_at)
                                              WHERE w.started_at < floor_at)
        WHERE s.queue = p_queue;
    END IF;
    RETURN QUERY
    SELECT c.g, count(*)::int FROM unnest(walk_groups || below_groups) AS c (g) GROUP BY c.g;
END
$$;

-- The claim of queues with flow control, as in 0015 but for step 2, which counts through sched_queue_running.
CREATE OR REPLACE FUNCTION sched_claim_limited(
    p_queue text, p_tasks text[], p_limit integer, p_worker uuid,
    p_seg_hi integer[], p_seg_lo integer[], p_seg_run_at timestamptz[], p_seg_id bigint[], p_seg_until timestamptz[],
    p_seg_full boolean, p_grp_name text[], p_grp_priority integer[], p_grp_from timestamptz[],
    p_grp_run_at timestamptz[], p_grp_id bigint[])
RETURNS TABLE (id bigint, task text, payload jsonb, attempt integer, max_attempts integer, timeout_s float8,
               lease bigint, trace_context jsonb, priority integer, run_at timestamptz, group_name text,
               marks_level boolean)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- Index scans, never bitmap scans: an index scan marks the dead entries finished runs leave in the partial
-- index of running jobs (which the count reads) so later scans skip them; a bitmap scan revisits every one
-- until vacuum, and each claim would cost more than the last. Never sequential scans either: every statement
-- here reads a partial index or a primary key, but the planner, costing each heap fetch as a random read,
-- counted the running jobs (a few hundred of a table of thousands) with a scan of the whole table, which grows
-- with the finished jobs the table keeps. No sorts where an index gives the order: see sched_group_head. And
-- no JIT: a path that needs a sort still counts its penalty in the plan's cost (as do the branches a condition
-- turns off), and such a cost made every statement compile itself, 0.25 to 2 s a claim.
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_sort = off
-- Put back when the function returns: step 4 turns it off for one statement.
SET enable_indexscan = on
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    q sched_queues;
    t_now timestamptz;
    level float8;
    n integer := p_limit;
    running_total integer := 0;
    per_group jsonb := '{}';
    full_groups text[] := '{}';
    empty_groups text[] := '{}';
    blocked text[];
    group_cap integer;
    taken integer;
    visits integer;
    head_ids bigint[];
    head_groups text[];
    head_priorities integer[];
    head_run_ats timestamptz[];
    spread boolean;
    -- The lowest priority the claim may take (see 4), NULL for any.
    least_priority integer;
    -- Due deferred rows are read from this moment on: all of them in a full pass, else those of the last 2 s.
    due_since timestamptz := CASE WHEN p_seg_full THEN '-infinity'::timestamptz ELSE now() - interval '2 seconds' END;
    -- The groups the worker knows, in name order (none in a full pass), and the first one after the cursor.
    k_name text[] := '{}';
    k_priority integer[] := '{}';
    k_from timestamptz[] := '{}';
    k_run_at timestamptz[] := '{}';
    k_id bigint[] := '{}';
    k_after integer;
    -- The turns between groups (step 4): each group's name, place in the ring and first entry.
    turn_groups text[] := '{}';
    turn_pos integer[] := '{}';
    turn_priorities integer[] := '{}';
    turn_run_ats timestamptz[] := '{}';
    turn_ids bigint[] := '{}';
BEGIN
    -- The counts and the buckets are read on snapshots taken after the queue's row lock (step 2), which only READ
    -- COMMITTED gives a statement: at REPEATABLE READ a claim that waited for the lock would not see what the
    -- claim before it took and charged, and could pass the limits. (Workers refuse to start at another level.)
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'sched_claim_limited needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Run the claim in its own transaction at READ COMMITTED (default_transaction_isolation).';
    END IF;
    -- 1. Take the queue's turn. A claimer that waited here gets the row's newest version (a pause, a new limit
    --    or a charge of the bucket committed while it waited). A queue claimed here only for its turns between
    --    groups may have no row yet: its first claim makes one (with no settings) to keep the cursor.
    SELECT * INTO q FROM sched_queues s WHERE s.queue = p_queue FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO sched_queues (queue) VALUES (p_queue) ON CONFLICT DO NOTHING;
        SELECT * INTO q FROM sched_queues s WHERE s.queue = p_queue FOR UPDATE;
    END IF;
    IF NOT FOUND OR q.paused THEN
        RETURN;
    END IF;
    -- Every bucket is read and charged at this one moment, after the lock: claims of the queue follow each
    -- other, so their moments only go forward.
    t_now := clock_timestamp();
    IF q.rate IS NOT NULL THEN
        level := least(q.burst, q.tokens + q.rate * greatest(0, extract(epoch FROM t_now - q.refilled_at)));
        n := least(n, floor(level)::int);
    END IF;
    -- 2. Count on a snapshot taken after the lock: every earlier claim of this queue has committed. The running
    --    set is small (it is bounded by the workers' slots); sched_queue_running reads it from the queue's floor
    --    on (migration 0016). A queue without concurrency limits needs no count.
    IF q.max_running IS NOT NULL OR q.group_concurrency IS NOT NULL THEN
        SELECT coalesce(sum(c.n), 0)::int,
               coalesce(jsonb_object_agg(c.g, c.n) FILTER (WHERE c.g IS NOT NULL), '{}'),
               coalesce(array_agg(c.g) FILTER (WHERE c.g IS NOT NULL AND c.n >= q.group_concurrency), '{}')
        INTO running_total, per_group, full_groups
        FROM (SELECT r.group_name AS g, r.n FROM sched_queue_running(p_queue, p_seg_full, t_now) r) c;
    END IF;
    IF q.max_running IS NOT NULL THEN
        n := least(n, q.max_running - running_total);
    END IF;
    IF n <= 0 THEN
        RETURN;
    END IF;
    -- Group buckets: at most once a second, drop the rows of buckets that became full since the last time (a
    -- full bucket is the same as none): a range from where that sweep ended, so no sweep walks the entries of
    -- rows an earlier one deleted (docs/protocol.md, "Group rates"). Then find the empty ones (less than one
    -- token): their groups are skipped like groups at their limit.
    IF q.group_rate IS NOT NULL THEN
        IF q.group_swept_at IS NULL OR q.group_swept_at < t_now - interval '1 second' THEN
            DELETE FROM sched_group_buckets b
            WHERE b.queue = p_queue AND b.full_at > coalesce(q.group_swept_at, '-infinity') AND b.full_at <= t_now;
            UPDATE sched_queues s SET group_swept_at = t_now WHERE s.queue = p_queue;
        END IF;
        SELECT coalesce(array_agg(b.group_name), '{}') INTO empty_groups FROM sched_group_buckets b
        WHERE b.queue = p_queue
          AND b.full_at > t_now + make_interval(secs => (q.group_burst - 1) / q.group_rate);
    END IF;
    blocked := full_groups || empty_groups;
    -- The most jobs one group can take in this claim: its limit, its bucket (none without either).
    group_cap := least(q.group_concurrency, floor(q.group_burst)::int);
    -- Groups visited in turn: enough for the jobs asked for at group_cap each (5 without a cap: each probe of
    -- the skip scan costs about as much as taking a job, so visiting one group per job asked for would double
    -- the claim), and at least 64 so a claim spreads over many groups, never more than the jobs asked for.
    visits := least(n, greatest(64, n / coalesce(group_cap, 5) + 1));
    IF q.fair AND NOT p_seg_full THEN
        -- DISTINCT ON: a name given twice would take two turns.
        SELECT coalesce(array_agg(k.g ORDER BY k.g), '{}'), coalesce(array_agg(k.p ORDER BY k.g), '{}'),
               coalesce(array_agg(k.f ORDER BY k.g), '{}'), coalesce(array_agg(k.r ORDER BY k.g), '{}'),
               coalesce(array_agg(k.i ORDER BY k.g), '{}')
        INTO k_name, k_priority, k_from, k_run_at, k_id
        FROM (SELECT DISTINCT ON (k.g) k.g, k.p, k.f, k.r, k.i
              FROM unnest(p_grp_name, p_grp_priority, p_grp_from, p_grp_run_at, p_grp_id) AS k (g, p, f, r, i)
              WHERE k.g IS NOT NULL ORDER BY k.g) k;
    END IF;
    k_after := 1 + (SELECT count(*) FROM unnest(k_name) AS k (g) WHERE k.g <= coalesce(q.rr_group, ''));
    -- 3. The head: the first n jobs in claim order, skipping blocked groups, read by the worker's segments as
    --    JobClaim reads them (one range scan per segment, in order, until n rows). The spread head: when they
    --    are each the first of a different group, at most one has no group, and no deferred job has fallen due,
    --    they are what the turns below ask of a claim: every group's first job and none a second, none of a
    --    group at its limit or out of tokens (those are blocked), by priority; only which groups go first
    --    differs (claim order, not the cursor: first jobs are taken oldest first, so none waits for ever). The
    --    claim takes them as they are, for the price of one index scan: the common case of many groups whose
    --    jobs arrive interleaved. Otherwise (a group's second job among them, as when one group's backlog leads)
    --    the turns decide, and these rows are the head of their candidates.
    --    (The rows come in claim order: the segments are in claim order and each is read in it.)
    SELECT coalesce(array_agg(h.id), '{}'), coalesce(array_agg(h.g), '{}'), coalesce(array_agg(h.priority), '{}'),
           coalesce(array_agg(h.run_at), '{}'), count(*) = count(DISTINCT coalesce(h.g, ''))
    INTO head_ids, head_groups, head_priorities, head_run_ats, spread
    FROM (SELECT c.id, c.g, c.priority, c.run_at
          FROM unnest(p_seg_hi, p_seg_lo, p_seg_run_at, p_seg_id, p_seg_until)
              AS s (hi, lo, from_run_at, from_id, until_run_at)
          CROSS JOIN LATERAL (
              SELECT * FROM (
                  SELECT j.id, j.group_name::text AS g, j.priority::int AS priority, j.run_at FROM sched_jobs j
                  WHERE s.hi = s.lo
                    AND j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
                    AND j.priority = s.hi
                    AND (j.run_at, j.id) >= (s.from_run_at, s.from_id) AND j.run_at < s.until_run_at
                    AND j.task = ANY(p_tasks)
                    AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
                  ORDER BY j.run_at, j.id
                  LIMIT n) AS one_level
              UNION ALL
              SELECT * FROM (
                  SELECT j.id, j.group_name::text AS g, j.priority::int AS priority, j.run_at FROM sched_jobs j
                  WHERE s.hi > s.lo
                    AND j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
                    AND j.priority <= s.hi AND j.priority >= s.lo
                    AND j.task = ANY(p_tasks)
                    AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
                  ORDER BY j.priority DESC, j.run_at, j.id
                  LIMIT n) AS levels
          ) AS c
          LIMIT n) h;
    spread := spread AND NOT EXISTS (SELECT 1 FROM sched_jobs d
                                     WHERE d.state = 'queued' AND d.deferred AND d.queue = p_queue
                                       AND d.run_at <= now() AND d.run_at >= due_since AND d.task = ANY(p_tasks));
    -- 4. Otherwise take jobs in claim order (docs/protocol.md, "Claim"), and for a fair queue, in turns between
    --    groups ("Fair sharing"). Candidates come from
    --    - the head of the queue (step 3) and the earliest due deferred rows, as JobClaim reads them: n rows of
    --      each, which is all an unfair queue can take; a fair one takes the groups' jobs in turns;
    --    - for a fair queue, the next groups after the queue's cursor (rr_group), in name order and round again
    --      from the first (the turns, below), as many groups as the claim needs (see visits) plus those blocked,
    --      so the cost follows the claim, not the groups; from each, its free slots and tokens but no more than
    --      its share of the claim (what is left goes to the next).
    --    Within a priority, every group's first job comes before any group's second, a group at most taking
    --    its free slots and its whole tokens; the cursor moves to the last group served, so the next claim
    --    starts after it. Candidates are then locked; a row locked elsewhere is skipped, which can only take
    --    fewer jobs. Each group's bucket is charged for exactly the jobs taken of it.
    --
    --    The turns: each group with a ready job and its first entry (of any task), found by a skip scan of
    --    sched_jobs_ready_group, one probe per group. A group the worker knows is not probed but read from its
    --    position (sched_group_head), and the skip scan looks only between two known names, where it finds the
    --    groups the worker does not know: a probe bounded by the next known name, one descent when there are
    --    none. So a claim visits the groups a full pass would (those with a ready job), in the same order, and
    --    walks none of the jobs claimed from the groups the worker knows. Only the grouped index's columns are
    --    read here, so with index scans off it is read by index-only scans (see sched_group_head); the setting
    --    holds for this statement alone (the function's own SET puts it back on when it returns).
    IF q.fair AND NOT spread THEN
        PERFORM set_config('enable_indexscan', 'off', true);
        -- Each row is a group in ring order with its first entry, if it has one: first the groups after the
        -- cursor (phase 1), then, only for the visits those did not fill, round again from the first group up to
        -- the cursor (phase 2; a claim in the middle of the ring probes no group twice). k is the index of the
        -- next known name, found how many groups with an entry the ring has found so far.
        WITH RECURSIVE ring (phase, g, pos, id, priority, run_at, k, found) AS (
            -- Where the turns start: the cursor (not a group; pos 0).
            SELECT 1, coalesce(q.rr_group, ''), 0, NULL::bigint, NULL::int, NULL::timestamptz, k_after, 0
            UNION ALL
            -- The next group: one between the last and the next known name (a probe bounded by that name, or
            -- by the cursor in phase 2), else that known name, else the end of phase 1 (a row that is not a
            -- group, from which phase 2 starts at the first name).
            SELECT CASE WHEN nx.turn THEN w.phase ELSE 2 END, CASE WHEN nx.turn THEN coalesce(u.g, b.kn) ELSE '' END,
                   CASE WHEN nx.turn THEN w.pos + 1 ELSE 0 END, coalesce(u.id, h.id),
                   coalesce(u.priority, h.priority), coalesce(u.run_at, h.run_at),
                   CASE WHEN nx.turn THEN w.k + (u.g IS NULL)::int ELSE 1 END,
                   w.found + (coalesce(u.id, h.id) IS NOT NULL)::int
            FROM ring w
            CROSS JOIN LATERAL (
                SELECT CASE WHEN w.phase = 1 OR k_name[w.k] <= q.rr_group THEN k_name[w.k] END AS kn) b
            LEFT JOIN LATERAL (
                SELECT * FROM (
                    (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                     WHERE b.kn IS NOT NULL AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
                       AND r.group_name IS NOT NULL AND r.group_name > w.g AND r.group_name < b.kn
                     ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
                    UNION ALL
                    (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                     WHERE b.kn IS NULL AND w.phase = 1 AND r.state = 'queued' AND NOT r.deferred
                       AND r.queue = p_queue AND r.group_name IS NOT NULL AND r.group_name > w.g
                     ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
                    UNION ALL
                    (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                     WHERE b.kn IS NULL AND w.phase = 2 AND r.state = 'queued' AND NOT r.deferred
                       AND r.queue = p_queue AND r.group_name IS NOT NULL AND r.group_name > w.g
                       AND r.group_name <= q.rr_group
                     ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
                ) AS x LIMIT 1) AS u ON true
            -- LIMIT keeps the subquery whole, so that its condition is checked before it runs, not after.
            LEFT JOIN LATERAL (
                SELECT f.* FROM sched_group_head(p_queue, b.kn, k_priority[w.k], k_from[w.k], k_run_at[w.k],
                                                 k_id[w.k]) AS f
                WHERE u.g IS NULL AND b.kn IS NOT NULL LIMIT 1) AS h ON true
            CROSS JOIN LATERAL (SELECT u.g IS NOT NULL OR b.kn IS NOT NULL AS turn) nx
            WHERE w.found < visits + cardinality(blocked) AND (nx.turn OR (w.phase = 1 AND q.rr_group IS NOT NULL))
        )
        -- The jobs without a group take one turn together, after the last group and before the first. A known
        -- group without a ready entry from its position takes no turn.
        SELECT array_agg(t.g ORDER BY t.pos), array_agg(t.pos ORDER BY t.pos),
               array_agg(t.priority ORDER BY t.pos), array_agg(t.run_at ORDER BY t.pos),
               array_agg(t.id ORDER BY t.pos)
        INTO turn_groups, turn_pos, turn_priorities, turn_run_ats, turn_ids
        FROM (SELECT t.* FROM (
                  SELECT r.g, (r.phase - 1) * 1000000 + r.pos AS pos, r.id, r.priority, r.run_at FROM ring r
                  WHERE r.pos > 0 AND r.id IS NOT NULL
                  UNION ALL
                  SELECT NULL, 1000000, NULL, NULL, NULL
              ) t
              WHERE t.g IS NULL OR t.g <> ALL(blocked)
              ORDER BY t.pos
              LIMIT visits + 1) t;
        PERFORM set_config('enable_indexscan', 'on', true);
    END IF;
    -- A full head ends where the claim stopped reading the queue in claim order: a job after it, which the claim
    -- never saw (one without a group, which only the head finds), may come before a candidate of a lower
    -- priority. Those are left for the next claim: it happens only when head rows are over their group's cap,
    -- and that group is then blocked. Unless the claim took nothing (the rows it could take among the head's
    -- were locked elsewhere, as SKIP LOCKED skips them): it then picks again without that bound, so that a job
    -- with a free slot is never held back by rows it cannot take.
    least_priority := CASE WHEN cardinality(head_ids) >= n THEN head_priorities[cardinality(head_priorities)] END;
    LOOP
        RETURN QUERY
        WITH turns AS (
            SELECT t.g, t.pos, t.priority, t.run_at, t.id
            FROM unnest(turn_groups, turn_pos, turn_priorities, turn_run_ats, turn_ids)
                AS t (g, pos, priority, run_at, id)
        ),
        candidates AS (
            SELECT h.id, h.g, h.priority, h.run_at
            FROM unnest(head_ids, head_groups, head_priorities, head_run_ats) AS h (id, g, priority, run_at)
            UNION
            (SELECT j.id, j.group_name::text, j.priority::int, j.run_at FROM sched_jobs j
             WHERE j.id = ANY(ARRAY(SELECT d.id FROM sched_jobs d
                                    WHERE d.state = 'queued' AND d.deferred AND d.queue = p_queue AND d.run_at <= now()
                                      AND d.run_at >= due_since AND d.task = ANY(p_tasks)
                                    ORDER BY d.run_at, d.id
                                    LIMIT 1000))
               AND j.state = 'queued' AND j.deferred
               AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
             ORDER BY j.priority DESC, j.run_at, j.id
             LIMIT n)
            UNION
            -- Each group's next jobs that this worker can run, from its first entry on (which may be of a task this
            -- worker lacks: taking it in the group's place would put a later job of another group before the
            -- group's own). (The turns are counted in a join, not a subquery in the arguments: that would keep the
            -- planner from inlining the function.)
            SELECT h.id, t.g, h.priority, h.run_at
            FROM turns t
            CROSS JOIN (SELECT count(*) AS turn_count FROM turns) tc
            CROSS JOIN LATERAL (
                SELECT r.id, r.priority, r.run_at
                FROM sched_group_jobs(p_queue, t.g, t.priority, t.run_at, t.id, p_tasks,
                                      -- least() ignores NULLs: a limit the queue does not have takes no part.
                                      least(q.group_concurrency - coalesce((per_group ->> t.g)::int, 0), group_cap,
                                            1 + n / tc.turn_count)) AS r
                -- OFFSET 0 keeps the subquery whole: the turn of the jobs without a group reads nothing.
                WHERE t.g IS NOT NULL OFFSET 0) h
        ),
        ranked AS (
            SELECT c.id, c.g, c.priority, c.run_at, t.pos,
                   row_number() OVER (PARTITION BY c.g ORDER BY c.priority DESC, c.run_at, c.id) AS rank
            FROM candidates c
            -- '' stands for no group (a name is never empty): an equality the planner can hash.
            LEFT JOIN turns t ON coalesce(t.g, '') = coalesce(c.g, '')
        ),
        -- The whole tokens of the buckets of the groups among the candidates: a group's row that is not yet full
        -- (one at most; a group without one has a full bucket), read from t_now on, so not through the rows of
        -- its earlier charges.
        bucket_tokens AS (
            SELECT g.g, floor(q.group_burst
                              - greatest(0, extract(epoch FROM b.full_at - t_now)) * q.group_rate)::int AS whole
            FROM (SELECT DISTINCT r.g FROM ranked r WHERE q.group_rate IS NOT NULL AND r.g IS NOT NULL) g
            CROSS JOIN LATERAL (SELECT max(b.full_at) AS full_at FROM sched_group_buckets b
                                WHERE b.queue = p_queue AND b.group_name = g.g AND b.full_at > t_now) b
            WHERE b.full_at IS NOT NULL
        ),
        -- The spread head as it is (see 3), or what the turns give; the branch not taken is never executed.
        picked AS (
            SELECT h.id, NULL::text AS g, NULL::int AS pos FROM unnest(head_ids) AS h (id) WHERE spread
            UNION ALL
            (SELECT r.id, r.g, r.pos FROM ranked r
             LEFT JOIN bucket_tokens k ON k.g = r.g
             WHERE NOT spread
               AND (least_priority IS NULL OR r.priority >= least_priority)
               AND (q.group_concurrency IS NULL OR r.g IS NULL
                    OR r.rank + coalesce((per_group ->> r.g)::int, 0) <= q.group_concurrency)
               AND (q.group_rate IS NULL OR r.g IS NULL OR r.rank <= coalesce(k.whole, floor(q.group_burst)::int))
             ORDER BY r.priority DESC,
                      CASE WHEN q.fair THEN r.rank ELSE 0 END,
                      coalesce(r.pos, 3000000), r.run_at, r.id
             LIMIT n)
        ),
        locked AS (
            SELECT j.id FROM sched_jobs j
            WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) AND j.state = 'queued'
              AND j.task = ANY(p_tasks) AND j.run_at <= now()
            FOR UPDATE SKIP LOCKED
        ),
        moved AS (
            -- The cursor moves to the last group served in turn ('' for the jobs without a group: every name is
            -- after it).
            UPDATE sched_queues s
            SET rr_group = (SELECT coalesce(p.g, '') FROM picked p WHERE p.pos IS NOT NULL ORDER BY p.pos DESC LIMIT 1)
            WHERE s.queue = p_queue AND q.fair
              AND EXISTS (SELECT 1 FROM picked p WHERE p.pos IS NOT NULL)
        ),
        -- started_at is the moment the buckets were read and charged (after the lock), not the transaction's
        -- start: claims of a queue follow each other in it, which is what a check of the rates can count on.
        claimed AS (
            UPDATE sched_jobs j
            SET state = 'running', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now,
                lease = nextval('sched_job_lease_seq')
            WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
            RETURNING j.id, j.task::text AS task, j.payload::jsonb AS payload, j.attempt::int AS attempt,
                      j.max_attempts::int AS max_attempts, extract(epoch FROM j.timeout)::float8 AS timeout_s, j.lease,
                      j.trace_context, j.priority::int AS priority, j.run_at, j.group_name::text AS g
        ),
        -- Each group's bucket pays for exactly the jobs taken of it: full_at moves k / rate ahead of the later of
        -- itself and now (rounded up to the microsecond, so rounding never gives a token away). The charge is a new
        -- row, and the group's row that was not yet full is deleted: rows are never updated, so the versions a
        -- charge leaves behind lie before the moment later claims read from (see bucket_tokens).
        takes AS (
            SELECT c.g, count(*) AS k FROM claimed c
            WHERE q.group_rate IS NOT NULL AND c.g IS NOT NULL
            GROUP BY c.g
        ),
        refilling AS (
            DELETE FROM sched_group_buckets b USING takes t
            WHERE b.queue = p_queue AND b.group_name = t.g AND b.full_at > t_now
            RETURNING b.group_name, b.full_at
        ),
        charged AS (
            INSERT INTO sched_group_buckets (queue, group_name, full_at)
            SELECT p_queue, t.g,
                   greatest((SELECT max(r.full_at) FROM refilling r WHERE r.group_name = t.g), t_now)
                   + make_interval(secs => ceil(t.k * 1e6 / q.group_rate) / 1e6)
            FROM takes t
        ),
        -- The head's rows in claim order, and at each level the first one this claim did not take: the level's
        -- position may move up to the last job taken before it (marks_level), never past a job the head read and
        -- left. While a group is blocked the head read past its jobs without seeing them: no level moves then.
        head AS (
            SELECT h.id, h.priority, h.ord
            FROM unnest(head_ids, head_priorities) WITH ORDINALITY AS h (id, priority, ord)
        ),
        left_at AS (
            SELECT h.priority, min(h.ord) AS ord FROM head h
            WHERE NOT EXISTS (SELECT 1 FROM claimed c WHERE c.id = h.id)
            GROUP BY h.priority
        )
        SELECT c.id, c.task, c.payload, c.attempt, c.max_attempts, c.timeout_s, c.lease, c.trace_context, c.priority,
               -- No position before year 1000, as in JobClaim: such a level is read from its beginning.
               CASE WHEN c.run_at >= '1000-01-01 00:00:00+00' THEN c.run_at END, c.g,
               coalesce(cardinality(blocked) = 0 AND h.ord < coalesce(l.ord, 2147483647), false)
        FROM claimed c
        LEFT JOIN head h ON h.id = c.id
        LEFT JOIN left_at l ON l.priority = c.priority;
        GET DIAGNOSTICS taken = ROW_COUNT;
        EXIT WHEN taken > 0 OR least_priority IS NULL;
        least_priority := NULL;
    END LOOP;
    -- 5. Charge the queue's bucket for exactly the jobs taken, as JobClaim does.
    IF q.rate IS NOT NULL THEN
        UPDATE sched_queues s SET tokens = level - taken, refilled_at = greatest(q.refilled_at, t_now)
        WHERE s.queue = p_queue;
    END IF;
END
$$;
