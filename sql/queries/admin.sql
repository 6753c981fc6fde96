-- Queries of the schema and session machinery: migrations, roles, the clock, session settings.
-- Every runtime query lives in this folder, one per operation, named Entity+Verb and sorted by name within
-- its file. Each starts with "-- name: Name" and a one-line description. Parameters use psycopg's %(name)s
-- style (%(name)b for a binary parameter).

-- name: ClockNow
-- The database's clock: schedule times are computed from it, never from a client's or worker's clock.
SELECT now();

-- name: MigrationLatest
-- The newest migration applied (on a database where the migrations table exists).
SELECT coalesce(max(version), 0) FROM sched_migrations;

-- name: MigrationListApplied
-- Applied migrations, or nothing on an empty database.
SELECT version, name, checksum FROM sched_migrations ORDER BY version;

-- name: MigrationLock
-- Serialize concurrent migrates; held until the session's connection closes.
SELECT pg_advisory_lock(hashtext('sched_migrate'));

-- name: MigrationLockTransaction
-- Serialize concurrent migrates until this transaction ends (behind a transaction pooler, which has no session).
SELECT pg_advisory_xact_lock(hashtext('sched_migrate'));

-- name: MigrationRecord
-- Mark one migration applied, in the same transaction as its DDL.
INSERT INTO sched_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: MigrationSetLockTimeout
-- How long a migration's statements wait for a table lock, for this transaction only: a lock request queued
-- behind a long transaction holds up every claim and add that comes after it.
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: MigrationTableExists
-- Whether any migration was ever applied here.
SELECT to_regclass('sched_migrations') IS NOT NULL;

-- name: MigrationUnlock
-- Release the migrate lock.
SELECT pg_advisory_unlock(hashtext('sched_migrate'));

-- name: RoleCallerPrivileges
-- What granting to sched's roles needs of the caller: CREATEROLE (only while a role is missing), and the
-- right to pass on CONNECT and TEMPORARY on this database (its owner holds it).
SELECT current_user,
       r.rolsuper OR r.rolcreaterole,
       has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION')
           AND has_database_privilege(current_database(), 'TEMPORARY WITH GRANT OPTION')
FROM pg_roles r
WHERE r.rolname = current_user;

-- name: RoleCountSched
-- How many of sched's group roles exist; `sched migrate` keeps their grants current once they all do.
SELECT count(*) FROM pg_roles WHERE rolname = ANY(%(roles)s::text[]);

-- name: RoleListSched
-- Which of sched's group roles exist.
SELECT rolname FROM pg_roles WHERE rolname = ANY(%(roles)s::text[]) ORDER BY rolname;

-- name: SchemaCreate
-- Create the installation's schema; only when it is missing, so an owner without CREATE on the database can
-- migrate into a schema an admin made. The loader writes the (checked) schema name for sched_schema.
CREATE SCHEMA sched_schema;

-- name: SchemaExists
-- Whether the installation's schema exists.
SELECT to_regnamespace(%(schema)s) IS NOT NULL;

-- name: SchemaUse
-- Resolve the unqualified names of a migration or of the roles script in the installation's schema, for the
-- rest of this transaction only.
SELECT set_config('search_path', %(schema)s, true);

-- name: SessionBackendPid
-- The server process this statement runs in. A connection pooler answers the connection's start-up with a
-- process id of its own invention, so a mismatch with this one shows a pooler between client and server.
SELECT pg_backend_pid();

-- name: SessionClaimerPlans
-- A claimer's session plans by the indexes even in the plans it keeps. The claim is a prepared statement, and
-- after five executions the server may keep one plan for the session, made without the values: a worker that
-- polled an empty queue at its start kept a plan that read sched_jobs sequentially and sorted it (the cheapest
-- way through a nearly empty table), and where nothing invalidates the plan (no vacuum or analyze of the
-- table: while the horizon is held, with autovacuum off or waiting) it kept reading the whole table, dead rows
-- and all, at every claim. Every read of the claim has an index; with sequential and bitmap scans off, a kept
-- plan uses them. (Behind a transaction pooler nothing is prepared, so no plan is kept.)
SELECT set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false);

-- name: SessionCommitWithoutFlushWait
-- Commits return before the WAL flush: for a producer that chose speed over the last moment of durability.
SET synchronous_commit = off;

-- name: SessionSetSynchronousCommit
-- How durable this session's commits are when they return (a worker's SCHED_WORKER_COMMIT): off, local,
-- remote_write or on. set_config, not SET, because SET takes no parameters.
SELECT set_config('synchronous_commit', %(level)s, false);

-- name: TableExists
-- Whether a relation exists, so readers can tolerate a schema that an older sched created.
SELECT to_regclass(%(name)s) IS NOT NULL;

-- name: TransactionOpen
-- Makes a non-autocommit connection open its implicit transaction (psycopg sends BEGIN before the first
-- statement), so that sched's block nests in the caller's transaction as a savepoint.
SELECT 1;

-- name: TransactionSetSynchronousCommit
-- SCHED_WORKER_COMMIT for this transaction only: behind a transaction pooler a session setting would stay on a
-- server connection that other clients then use, and be missing from the next transaction of this one.
SELECT set_config('synchronous_commit', %(level)s, true);
