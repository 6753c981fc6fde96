-- The per-column rules of sched_jobs move from table CHECK constraints into domains.
--
-- PostgreSQL compiles a table's CHECK constraints afresh for every INSERT or UPDATE statement, and with a dozen of
-- them that was a quarter of a single-job insert's server time. A domain's check is compiled into the statement's
-- plan instead, which a prepared statement keeps. The rules are unchanged. Only the three rules that tie columns
-- together stay on the table.
--
-- Each column first takes a domain without a check: the same representation, so the table is not rewritten (the
-- three indexes keyed on queue are rebuilt). Then each domain gains its check, which reads the table once to
-- validate the rows already there.

CREATE DOMAIN sched_queue_name AS text;
CREATE DOMAIN sched_task_name AS text;
CREATE DOMAIN sched_payload AS jsonb;
CREATE DOMAIN sched_priority AS integer;
CREATE DOMAIN sched_count AS integer;
CREATE DOMAIN sched_max_attempts AS integer;
CREATE DOMAIN sched_timeout AS interval;
CREATE DOMAIN sched_dedupe_key AS text;

ALTER TABLE sched_jobs
    DROP CONSTRAINT sched_jobs_queue_name,
    DROP CONSTRAINT sched_jobs_task_name,
    DROP CONSTRAINT sched_jobs_payload_object,
    DROP CONSTRAINT sched_jobs_priority_range,
    DROP CONSTRAINT sched_jobs_attempt_range,
    DROP CONSTRAINT sched_jobs_max_attempts_range,
    DROP CONSTRAINT sched_jobs_timeout_range,
    DROP CONSTRAINT sched_jobs_dedupe_key_length,
    DROP CONSTRAINT sched_jobs_pending_deps_range,
    ALTER COLUMN queue TYPE sched_queue_name,
    ALTER COLUMN task TYPE sched_task_name,
    ALTER COLUMN payload TYPE sched_payload,
    ALTER COLUMN priority TYPE sched_priority,
    ALTER COLUMN attempt TYPE sched_count,
    ALTER COLUMN max_attempts TYPE sched_max_attempts,
    ALTER COLUMN timeout TYPE sched_timeout,
    ALTER COLUMN dedupe_key TYPE sched_dedupe_key,
    ALTER COLUMN pending_deps TYPE sched_count;

-- Names are letters, digits and _.:- only: the regular expression looks for one character outside that set.
ALTER DOMAIN sched_queue_name ADD CONSTRAINT sched_queue_name_valid
    CHECK (length(VALUE) BETWEEN 1 AND 64 AND VALUE !~ '[^-A-Za-z0-9_.:]');
ALTER DOMAIN sched_task_name ADD CONSTRAINT sched_task_name_valid
    CHECK (length(VALUE) BETWEEN 1 AND 128 AND VALUE !~ '[^-A-Za-z0-9_.:]');
ALTER DOMAIN sched_payload ADD CONSTRAINT sched_payload_object CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN sched_priority ADD CONSTRAINT sched_priority_range CHECK (VALUE BETWEEN -1000 AND 1000);
ALTER DOMAIN sched_count ADD CONSTRAINT sched_count_not_negative CHECK (VALUE >= 0);
ALTER DOMAIN sched_max_attempts ADD CONSTRAINT sched_max_attempts_range CHECK (VALUE BETWEEN 1 AND 1000);
ALTER DOMAIN sched_timeout ADD CONSTRAINT sched_timeout_range
    CHECK (VALUE > interval '0' AND VALUE <= interval '7 days');
ALTER DOMAIN sched_dedupe_key ADD CONSTRAINT sched_dedupe_key_length CHECK (length(VALUE) BETWEEN 1 AND 255);
