-- Leases: every run of a job is fenced by a token that never repeats, and every worker states its own
-- liveness contract. See docs/protocol.md ("Leases and fencing", "Reaper").
--
-- (worker_id, attempt) could not be the fence: `sched retry` resets the attempt to 0, and the same worker can
-- claim the same job again after a reap, so an old run and a new one could carry the same pair. A lease is
-- drawn from a sequence at each claim; the sequence never hands out a value twice (its cache only reorders
-- values between sessions, which the fence does not care about).
--
-- Locks: ADD COLUMN without a default only changes the catalog (a brief ACCESS EXCLUSIVE lock, no rewrite);
-- the UPDATE touches the running jobs alone, the small set a worker holds at migration time.

CREATE SEQUENCE sched_job_lease_seq AS bigint CACHE 64;

ALTER TABLE sched_jobs ADD COLUMN lease bigint;

-- Jobs running at migration time get a lease, so a reaper or a cancel of the new version can address them;
-- the workers of the older version that hold them still fence on (worker_id, attempt) and finish them.
UPDATE sched_jobs SET lease = nextval('sched_job_lease_seq') WHERE state = 'running';

-- A worker is judged by the contract it declared, whoever reaps: a reaper with a shorter threshold than the
-- worker beats by must not take a healthy worker's jobs away. Rows of older workers take today's defaults.
ALTER TABLE sched_workers
    ADD COLUMN stale_after interval NOT NULL DEFAULT '30 seconds',
    ADD COLUMN timeout_grace interval NOT NULL DEFAULT '10 seconds',
    ADD CONSTRAINT sched_workers_stale_after_positive CHECK (stale_after > interval '0'),
    ADD CONSTRAINT sched_workers_timeout_grace_range CHECK (timeout_grace >= interval '0');
