-- Groups: a job may name the group it belongs to (a tenant, a customer, a partner API), which queue controls
-- count per group (docs/protocol.md, "Queue controls").
--
-- The column takes a domain, like every column of sched_jobs whose values have a rule (0004_column_domains.sql):
-- a domain's check is compiled into a prepared statement's plan. Locks: a column whose domain has a check would
-- make ADD COLUMN rewrite the table to check every row's NULL; so the column is added while the domain has no
-- check (a catalog change under a brief ACCESS EXCLUSIVE lock), and the check comes after, NOT VALID: every row
-- holds NULL, which passes it, so there is nothing to scan. New values are checked from then on.

CREATE DOMAIN sched_group_name AS text;

ALTER TABLE sched_jobs ADD COLUMN group_name sched_group_name;

ALTER DOMAIN sched_group_name ADD CONSTRAINT sched_group_name_length CHECK (length(VALUE) BETWEEN 1 AND 255) NOT VALID;
