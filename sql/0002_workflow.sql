-- Queue controls (pause, rate limit, backlog cap) and recurring schedules.

-- One row per queue someone configured; a queue without a row is unpaused and unlimited, which is the
-- common case and costs the claim nothing but an index probe that finds no row.
CREATE TABLE sched_queues (
    queue        text PRIMARY KEY,
    paused       boolean NOT NULL DEFAULT false,
    -- Token bucket: "rate" tokens per second up to "burst"; "tokens" is the level at "refilled_at".
    rate         float8,
    burst        float8,
    tokens       float8,
    refilled_at  timestamptz,
    -- Admission control: adds are refused while this many jobs are queued.
    max_backlog  integer,
    updated_at   timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT sched_queues_queue_name CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT sched_queues_rate_positive CHECK (rate IS NULL OR rate > 0),
    CONSTRAINT sched_queues_bucket_complete CHECK (
        (rate IS NULL) = (burst IS NULL) AND (rate IS NULL) = (tokens IS NULL)
        AND (rate IS NULL) = (refilled_at IS NULL)),
    CONSTRAINT sched_queues_burst_range CHECK (burst IS NULL OR burst >= 1),
    CONSTRAINT sched_queues_max_backlog_range CHECK (max_backlog IS NULL OR max_backlog >= 1)
);

CREATE TABLE sched_schedules (
    name         text PRIMARY KEY,
    cron         text NOT NULL,
    tz           text NOT NULL DEFAULT 'UTC',
    task         text NOT NULL,
    queue        text NOT NULL DEFAULT 'default',
    payload      jsonb NOT NULL DEFAULT '{}',
    -- What to do with ticks missed while no worker ran: run the latest once, run them all, or skip them.
    catch_up     text NOT NULL DEFAULT 'latest',
    -- 'cli' schedules are managed by `sched schedule`; 'code' ones are declared by handlers and refreshed
    -- by workers at start, never overwriting a schedule an operator created under the same name.
    source       text NOT NULL DEFAULT 'cli',
    next_run_at  timestamptz NOT NULL,
    -- The newest tick that enqueued a job. A tick fires only if it is later than this, in the same statement
    -- that records it, so each tick enqueues exactly one job however many workers tick at once.
    last_tick    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT sched_schedules_name CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT sched_schedules_task_name CHECK (task ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    CONSTRAINT sched_schedules_queue_name CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT sched_schedules_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT sched_schedules_catch_up CHECK (catch_up IN ('latest', 'all', 'none')),
    CONSTRAINT sched_schedules_source CHECK (source IN ('cli', 'code'))
);

-- Tickers look only at due schedules.
CREATE INDEX sched_schedules_due ON sched_schedules (next_run_at);
