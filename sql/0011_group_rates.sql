-- Group rates and fair sharing by default (docs/protocol.md, "Group rates" and "Fair sharing").
--
-- A queue may give every group a token bucket of its own (group_rate per second up to group_burst), shared by
-- all workers and enforced inside the claim: a group whose bucket is empty is skipped and other groups' jobs are
-- taken instead. A bucket is one timestamp per (queue, group), full_at: the moment it will be full again (the
-- "theoretical arrival time" of the generic cell rate algorithm, which is the same bucket as the queue's, tokens
-- and refilled_at, written as one value). At time t it holds burst - max(0, full_at - t) * rate tokens; taking
-- k moves full_at to max(full_at, t) + k / rate. One value makes both questions a claim asks an index range:
-- the empty buckets (full_at more than (burst - 1) / rate ahead) and the full ones (full_at passed).
--
-- A full bucket is the same as no row, so rows are never kept for full buckets: a group has a row only while it
-- is refilling after a claim charged it, and each claim of the queue first deletes the rows that became full
-- (an index range on (queue, full_at), each row deleted once, so the work follows the charges). Rows of idle
-- groups are thus gone within burst / rate seconds of their last claim, and a queue with 10,000 groups keeps
-- rows only for the groups served in that time. Every read and write of a queue's buckets happens under the
-- queue's row lock that its claims take, so the charges of concurrent claimers are serialized.
--
-- Fair sharing (turns between groups) no longer needs --group-concurrency: it is on for every queue whose ready
-- jobs have groups unless the operator turns it off (fair = false). JobClaim hands such a queue to
-- sched_claim_limited, which creates the queue's row on its first claim to keep the turn's cursor (rr_group).
--
-- Locks: adding columns to sched_queues (nullable, or with a constant default) only changes the catalog; the
-- new table and its index are empty. The function is replaced in place.

ALTER TABLE sched_queues
    ADD COLUMN group_rate float8,
    ADD COLUMN group_burst float8,
    ADD COLUMN fair boolean NOT NULL DEFAULT true,
    ADD CONSTRAINT sched_queues_group_rate_range
        CHECK ((group_rate IS NULL AND group_burst IS NULL) OR (group_rate > 0 AND group_burst >= 1));

CREATE TABLE sched_group_buckets (
    queue       text NOT NULL,
    group_name  text NOT NULL,
    -- When the bucket is full again; the bucket holds group_burst - max(0, full_at - now) * group_rate tokens.
    full_at     timestamptz NOT NULL,
    PRIMARY KEY (queue, group_name)
);

-- The claim's two questions, the empty buckets and the full ones, are ranges of this index.
CREATE INDEX sched_group_buckets_full_at ON sched_group_buckets (queue, full_at) INCLUDE (group_name);

CREATE OR REPLACE FUNCTION sched_claim_limited(p_queue text, p_tasks text[], p_limit integer, p_worker uuid)
RETURNS TABLE (id bigint, task text, payload jsonb, attempt integer, max_attempts integer, timeout_s float8,
               lease bigint, trace_context jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- Index scans, never bitmap scans: an index scan marks the dead entries finished runs leave in the partial
-- index of running jobs (which the count reads) so later scans skip them; a bitmap scan revisits every one
-- until vacuum, and each claim would cost more than the last. Never sequential scans either: every statement
-- here reads a partial index or a primary key, but the planner, costing each heap fetch as a random read,
-- counted the running jobs (a few hundred of a table of thousands) with a scan of the whole table, which grows
-- with the finished jobs the table keeps; with the index, a claim of 500 from 1,000 groups took 13 ms
-- instead of 18.
SET enable_bitmapscan = off
SET enable_seqscan = off
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
    spread boolean;
BEGIN
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
    --    set is small (it is bounded by the workers' slots) and read through its partial index. A queue without
    --    concurrency limits needs no count.
    IF q.max_running IS NOT NULL OR q.group_concurrency IS NOT NULL THEN
        SELECT coalesce(sum(c.n), 0)::int,
               coalesce(jsonb_object_agg(c.g, c.n) FILTER (WHERE c.g IS NOT NULL), '{}'),
               coalesce(array_agg(c.g) FILTER (WHERE c.g IS NOT NULL AND c.n >= q.group_concurrency), '{}')
        INTO running_total, per_group, full_groups
        FROM (SELECT j.group_name::text AS g, count(*)::int AS n FROM sched_jobs j
              WHERE j.state = 'running' AND j.queue = p_queue
              GROUP BY j.group_name) c;
    END IF;
    IF q.max_running IS NOT NULL THEN
        n := least(n, q.max_running - running_total);
    END IF;
    IF n <= 0 THEN
        RETURN;
    END IF;
    -- Group buckets: drop the rows of buckets that are full again (a full bucket is the same as none), then find
    -- the empty ones (less than one token): their groups are skipped like groups at their limit.
    IF q.group_rate IS NOT NULL THEN
        DELETE FROM sched_group_buckets b WHERE b.queue = p_queue AND b.full_at <= t_now;
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
    -- 3. The spread head: the first n jobs in claim order (skipping blocked groups) are each the first of a
    --    different group, at most one has no group, and no deferred job has fallen due. Then they are what the
    --    turns below ask of a claim: every group's first job and none a second, none of a group at its limit or
    --    out of tokens (those are blocked), by priority; only which groups go first differs (claim order, not
    --    the cursor: first jobs are taken oldest first, so none waits for ever). The claim takes them as they
    --    are, for the price of one index scan: the common case of many groups whose jobs arrive interleaved.
    --    Otherwise (a group's second job among them, as when one group's backlog leads) the turns decide.
    SELECT coalesce(array_agg(h.id), '{}'), count(*) = count(DISTINCT coalesce(h.g, ''))
    INTO head_ids, spread
    FROM (SELECT j.id, j.group_name::text AS g FROM sched_jobs j
          WHERE j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
            AND j.task = ANY(p_tasks)
            AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
          ORDER BY j.priority DESC, j.run_at, j.id
          LIMIT n) h;
    spread := spread AND NOT EXISTS (SELECT 1 FROM sched_jobs d
                                     WHERE d.state = 'queued' AND d.deferred AND d.queue = p_queue
                                       AND d.run_at <= now() AND d.task = ANY(p_tasks));
    -- 4. Otherwise take jobs in claim order (docs/protocol.md, "Claim"), and for a fair queue, in turns between
    --    groups ("Fair sharing"). Candidates come from
    --    - the head of the queue: the ready index in claim order, skipping blocked groups (at their limit, or
    --      with an empty bucket) while reading it, and the earliest due deferred rows, as JobClaim reads them:
    --      n rows of each, which is all an unfair queue can take; a fair one takes the groups' jobs in turns;
    --    - for a fair queue, the head of the next groups after the queue's cursor (rr_group), in name order
    --      and round again from the first: a skip scan of sched_jobs_ready_group, one probe per group, as many
    --      groups as the claim needs (see visits) plus those blocked, so the cost follows the claim, not the
    --      groups; from each, its free slots and tokens but no more than its share of the claim (what is left
    --      goes to the next).
    --    Within a priority, every group's first job comes before any group's second, a group at most taking
    --    its free slots and its whole tokens; the cursor moves to the last group served, so the next claim
    --    starts after it. Candidates are then locked; a row locked elsewhere is skipped, which can only take
    --    fewer jobs. Each group's bucket is charged for exactly the jobs taken of it.
    RETURN QUERY
    WITH RECURSIVE cursor_groups (g, pos, id, priority, run_at) AS (
        -- The first index entry of a group is its head, the job it would run first: the skip scan finds it.
        (SELECT r.group_name::text, 1, r.id, r.priority::int, r.run_at FROM sched_jobs r
         WHERE q.fair AND r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue
           AND r.group_name IS NOT NULL AND r.group_name > coalesce(q.rr_group, '')
         ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
        UNION ALL
        SELECT nx.g, c.pos + 1, nx.id, nx.priority, nx.run_at
        FROM cursor_groups c,
             LATERAL (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                      WHERE r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue AND r.group_name IS NOT NULL
                        AND r.group_name > c.g
                      ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1) nx
        WHERE c.pos < visits + cardinality(blocked)
    ),
    -- Round again from the first group only for the visits the groups after the cursor did not fill (a claim
    -- in the middle of the ring probes no group twice).
    first_groups (g, pos, id, priority, run_at) AS (
        (SELECT r.group_name::text, 1, r.id, r.priority::int, r.run_at FROM sched_jobs r
         WHERE q.fair AND q.rr_group IS NOT NULL AND r.state = 'queued' AND NOT r.deferred
           AND r.queue = p_queue AND r.group_name IS NOT NULL AND r.group_name <= q.rr_group
           AND (SELECT count(*) FROM cursor_groups) < visits + cardinality(blocked)
         ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1)
        UNION ALL
        SELECT nx.g, f.pos + 1, nx.id, nx.priority, nx.run_at
        FROM first_groups f,
             LATERAL (SELECT r.group_name::text AS g, r.id, r.priority::int AS priority, r.run_at FROM sched_jobs r
                      WHERE r.state = 'queued' AND NOT r.deferred AND r.queue = p_queue AND r.group_name IS NOT NULL
                        AND r.group_name > f.g AND r.group_name <= q.rr_group
                      ORDER BY r.group_name, r.priority DESC, r.run_at, r.id LIMIT 1) nx
        WHERE f.pos + (SELECT count(*) FROM cursor_groups) < visits + cardinality(blocked)
    ),
    -- The jobs without a group take one turn together, after the last group and before the first.
    turns AS (
        SELECT t.g, t.pos, t.id, t.priority, t.run_at FROM (
            SELECT c.g, c.pos, c.id, c.priority, c.run_at FROM cursor_groups c
            UNION ALL
            SELECT NULL, 1000000, NULL, NULL, NULL WHERE q.fair
            UNION ALL
            SELECT f.g, 1000000 + f.pos, f.id, f.priority, f.run_at FROM first_groups f
        ) t
        WHERE t.g IS NULL OR t.g <> ALL(blocked)
        ORDER BY t.pos
        LIMIT visits + 1
    ),
    candidates AS (
        (SELECT j.id, j.group_name::text AS g, j.priority, j.run_at FROM sched_jobs j
         WHERE j.state = 'queued' AND NOT j.deferred AND j.queue = p_queue AND j.run_at <= now()
           AND j.task = ANY(p_tasks)
           AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
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
           AND (j.group_name IS NULL OR j.group_name <> ALL(blocked))
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
                      -- least() ignores NULLs: a limit the queue does not have takes no part.
                      LIMIT least(q.group_concurrency - coalesce((per_group ->> t.g)::int, 0), group_cap,
                                  1 + n / (SELECT count(*) FROM turns))) h
    ),
    ranked AS (
        SELECT c.id, c.g, c.priority, c.run_at, t.pos,
               row_number() OVER (PARTITION BY c.g ORDER BY c.priority DESC, c.run_at, c.id) AS rank
        FROM candidates c
        -- '' stands for no group (a name is never empty): an equality the planner can hash.
        LEFT JOIN turns t ON coalesce(t.g, '') = coalesce(c.g, '')
    ),
    -- The whole tokens of the buckets of the groups among the candidates (a group without a row has a full one).
    bucket_tokens AS (
        SELECT g.g, floor(q.group_burst
                          - greatest(0, extract(epoch FROM b.full_at - t_now)) * q.group_rate)::int AS whole
        FROM (SELECT DISTINCT r.g FROM ranked r WHERE q.group_rate IS NOT NULL AND r.g IS NOT NULL) g
        JOIN sched_group_buckets b ON b.queue = p_queue AND b.group_name = g.g
    ),
    -- The spread head as it is (see 3), or what the turns give; the branch not taken is never executed.
    picked AS (
        SELECT h.id, NULL::text AS g, NULL::int AS pos FROM unnest(head_ids) AS h (id) WHERE spread
        UNION ALL
        (SELECT r.id, r.g, r.pos FROM ranked r
         LEFT JOIN bucket_tokens k ON k.g = r.g
         WHERE NOT spread
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
        -- The cursor moves to the last group served in turn ('' for the jobs without a group: every name is after it).
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
                  j.trace_context, j.group_name::text AS g
    ),
    -- Each group's bucket pays for exactly the jobs taken of it: full_at moves k / rate ahead of the later of
    -- itself and now (rounded up to the microsecond, so rounding never gives a token away).
    charged AS (
        INSERT INTO sched_group_buckets AS b (queue, group_name, full_at)
        SELECT p_queue, c.g, t_now + make_interval(secs => ceil(count(*) * 1e6 / q.group_rate) / 1e6)
        FROM claimed c
        WHERE q.group_rate IS NOT NULL AND c.g IS NOT NULL
        GROUP BY c.g
        ON CONFLICT (queue, group_name) DO UPDATE
        SET full_at = greatest(b.full_at, t_now) + (EXCLUDED.full_at - t_now)
    )
    SELECT c.id, c.task, c.payload, c.attempt, c.max_attempts, c.timeout_s, c.lease, c.trace_context FROM claimed c;
    GET DIAGNOSTICS taken = ROW_COUNT;
    -- 5. Charge the queue's bucket for exactly the jobs taken, as JobClaim does.
    IF q.rate IS NOT NULL THEN
        UPDATE sched_queues s SET tokens = level - taken, refilled_at = greatest(q.refilled_at, t_now)
        WHERE s.queue = p_queue;
    END IF;
END
$$;
