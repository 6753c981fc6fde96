-- Queries of the history of succeeded jobs (docs/design.md, "History and cleanup"): its slots, the one that
-- takes new rows, and how cleanup empties them.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: HistoryCountBefore
-- How many succeeded jobs in the history finished before the cutoff (cleanup --exact --dry-run).
SELECT count(*) FROM sched_job_history WHERE finished_at < now() - %(older_than)s::interval;

-- name: HistoryCountSlot
-- How many jobs one slot holds (cleanup --dry-run).
SELECT count(*) FROM sched_job_history WHERE slot = %(slot)s::int;

-- name: HistoryDeleteBefore
-- Delete one batch of succeeded jobs in the history that finished before the cutoff, and their edges (cleanup
-- --exact: the slots that straddle the cutoff); SKIP LOCKED lets cleanups on many hosts share the work.
WITH doomed AS (
    SELECT slot, id FROM sched_job_history
    WHERE finished_at < now() - %(older_than)s::interval
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM sched_job_history h USING doomed d WHERE h.slot = d.slot AND h.id = d.id RETURNING h.id
), edges AS (
    DELETE FROM sched_job_deps e
    WHERE e.job_id IN (SELECT id FROM deleted) OR e.depends_on IN (SELECT id FROM deleted)
)
SELECT count(*) FROM deleted;

-- name: HistoryRotate
-- Make an empty slot the one that takes new rows, unless another cleanup moved it first.
UPDATE sched_history SET current_slot = %(to)s::int, since = now()
WHERE current_slot = %(from)s::int AND NOT EXISTS (SELECT 1 FROM sched_job_history WHERE slot = %(to)s::int)
RETURNING current_slot;

-- name: HistorySlots
-- Every slot in order: whether it takes new rows, and its oldest and newest finish (NULL when empty), each read
-- from the one slot's index on finished_at (the partitions of the other slots are pruned when it runs); then the
-- database's clock. The slots come from an array, whose few rows the planner expects: joined to the tables
-- (which may never have been analysed) its estimates would pass JIT's threshold, and compiling took seconds.
SELECT s.slot, s.slot = (SELECT h.current_slot FROM sched_history h),
       (SELECT min(j.finished_at) FROM sched_job_history j WHERE j.slot = s.slot),
       (SELECT max(j.finished_at) FROM sched_job_history j WHERE j.slot = s.slot),
       now()
FROM unnest(ARRAY(SELECT generate_series(0, count(*)::int - 1) FROM pg_inherits
                  WHERE inhparent = 'sched_job_history'::regclass)) AS s(slot)
ORDER BY s.slot;

-- name: HistoryTruncate
-- Empty one slot if every job in it finished before the cutoff and it does not take new rows; how many jobs it
-- held, or NULL when it was left as it was (sched_history_truncate).
SELECT sched_history_truncate(%(slot)s::int, now() - %(older_than)s::interval);
