"""Every query sched runs at runtime goes through this package: one function per operation, each naming its
query in ``sql/queries/`` (no SQL is built here), split by what it operates on. Callers use
``repository.name(...)``; the modules are producers, runs (the worker's side), jobs, workers, queues,
schedules, reads, browse (the web dashboard's job pages) and bulk (retry, cancel and purge by filter, a batch
at a time). No loops over time and no sleeps: deciding when to call is the caller's job."""

from __future__ import annotations

from pgsched.repository.browse import BROWSE_STATES, JobPage, browse_jobs, failure_groups
from pgsched.repository.bulk import (
    Batch,
    JobFilter,
    Purged,
    cancel_batch,
    count_matching,
    purge_batch,
    retry_batch,
    sample_matching,
)
from pgsched.repository.jobs import (
    CancelMany,
    CancelResult,
    CleanupCounts,
    RetryResult,
    cancel_in_transaction,
    cancel_job,
    count_finished,
    delete_finished_batch,
    dependency_states,
    get_job,
    retry_job,
    retry_jobs,
)
from pgsched.repository.producers import commit_without_flush_wait, enqueue, enqueue_many
from pgsched.repository.queues import (
    list_queues,
    set_queue_concurrency,
    set_queue_fair,
    set_queue_group_rate,
    set_queue_max_backlog,
    set_queue_paused,
    set_queue_rate,
)
from pgsched.repository.reads import count_by_queue, explain_facts
from pgsched.repository.runs import (
    FULL_PASS,
    DueMarks,
    FirstReady,
    FirstReadyInGroups,
    FlowWait,
    GroupProbe,
    ReadyMarks,
    ReapResult,
    RecordResult,
    Segments,
    apply_task_limits,
    cancel_requested,
    claim_jobs,
    claim_params,
    first_ready,
    first_ready_in_groups,
    flow_wait,
    held_back,
    plan_claims_by_index,
    probe_ready,
    promote_due,
    promote_due_by_queue,
    rate_limited_backlog,
    ready_depth,
    reap_stale,
    record_outcomes,
    running_for_worker,
    set_commit_durability,
    set_progress,
    skip_leases_ahead,
)
from pgsched.repository.schedules import (
    delete_schedule,
    list_schedules,
    tick_schedules,
    upsert_code_schedules,
    upsert_schedule,
)
from pgsched.repository.workers import (
    deregister_worker,
    heartbeat_worker,
    list_workers,
    register_worker,
    schema_version,
)
from pgsched.sqlfiles import shared_name


def wakeup_channel() -> str:
    """The NOTIFY channel of new work (its payload names the queue) of this process's installation."""
    return shared_name("sched_wakeup")


def cancel_channel() -> str:
    """The NOTIFY channel of cancellation requests (its payload is the job id) of this process's installation."""
    return shared_name("sched_cancel")


__all__ = [
    "BROWSE_STATES",
    "FULL_PASS",
    "Batch",
    "CancelMany",
    "CancelResult",
    "CleanupCounts",
    "DueMarks",
    "FirstReady",
    "FirstReadyInGroups",
    "FlowWait",
    "GroupProbe",
    "JobFilter",
    "JobPage",
    "Purged",
    "ReadyMarks",
    "ReapResult",
    "RecordResult",
    "RetryResult",
    "Segments",
    "apply_task_limits",
    "browse_jobs",
    "cancel_batch",
    "cancel_channel",
    "cancel_in_transaction",
    "cancel_job",
    "cancel_requested",
    "claim_jobs",
    "claim_params",
    "commit_without_flush_wait",
    "count_by_queue",
    "count_finished",
    "count_matching",
    "delete_finished_batch",
    "delete_schedule",
    "dependency_states",
    "deregister_worker",
    "enqueue",
    "enqueue_many",
    "explain_facts",
    "failure_groups",
    "first_ready",
    "first_ready_in_groups",
    "flow_wait",
    "get_job",
    "heartbeat_worker",
    "held_back",
    "list_queues",
    "list_schedules",
    "list_workers",
    "plan_claims_by_index",
    "probe_ready",
    "promote_due",
    "promote_due_by_queue",
    "purge_batch",
    "rate_limited_backlog",
    "ready_depth",
    "reap_stale",
    "record_outcomes",
    "register_worker",
    "retry_batch",
    "retry_job",
    "retry_jobs",
    "running_for_worker",
    "sample_matching",
    "schema_version",
    "set_commit_durability",
    "set_progress",
    "set_queue_concurrency",
    "set_queue_fair",
    "set_queue_group_rate",
    "set_queue_max_backlog",
    "set_queue_paused",
    "set_queue_rate",
    "skip_leases_ahead",
    "tick_schedules",
    "upsert_code_schedules",
    "upsert_schedule",
    "wakeup_channel",
]
