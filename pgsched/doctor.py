"""Health checks for a sched installation: each says what it found and, when something is wrong, what to do."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pgsched.durations import format_duration
from pgsched.errors import SchedError

MIN_SERVER_VERSION = 130000
OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    """The outcome of one check; ``fix`` says what to do when ``status`` is not ok."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        """Whether this check makes the doctor exit 1."""
        return self.status == FAIL


@dataclass
class Thresholds:
    """The limits the checks judge against."""

    max_lag_s: float = 60.0
    max_transaction_age_s: float = 300.0
    # Vacuum is behind when dead tuples outnumber live ones and there are enough of them to matter.
    max_dead_ratio: float = 0.5
    # A warning from this ratio on (autovacuum's default scale factor), once past autovacuum's own threshold.
    warn_dead_ratio: float = 0.2
    min_dead_tuples: int = 10_000
    max_xmin_age: int = 10_000_000


@dataclass
class Report:
    """Every check's outcome, in the order they ran."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no check failed (warnings and skips do not count)."""
        return not any(check.failed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if check.failed]

    def as_json(self) -> dict[str, Any]:
        """The report as plain data for ``--json``."""
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


def diagnose(dsn: str, thresholds: Thresholds | None = None) -> Report:
    """Connect to ``dsn`` and run every check; an unreachable database is itself a failed check."""
    from pgsched.db import connect

    limits = thresholds or Thresholds()
    report = Report()
    try:
        conn = connect(dsn, application_name="sched-doctor")
    except SchedError as exc:
        report.checks.append(
            Check("database", FAIL, exc.message, "check SCHED_DATABASE_URL and that the server accepts connections")
        )
        return report
    with conn:
        report.checks.extend(run_checks(conn, limits))
    return report


def run_checks(conn: Any, limits: Thresholds) -> list[Check]:
    """Run every check on an open connection."""
    from pgsched import migrate
    from pgsched.db import server_version
    from pgsched.repository import reads

    checks = [check_server_version(server_version(conn))]
    pending = migrate.pending(conn)
    checks.append(check_migrations([f"{m.version:04d}_{m.name}" for m in pending]))
    if not reads.table_exists(conn, "sched_jobs"):
        skipped = "needs the sched tables"
        checks += [Check(name, SKIP, skipped) for name in ("workers", "lag", "vacuum", "autovacuum")]
    else:
        paused = reads.paused_queues(conn)
        queues = [{**asdict(q), "paused": q.queue in paused} for q in reads.ready_queues(conn)]
        unhandled = [asdict(u) for u in reads.unhandled_tasks(conn) if u.queue not in paused]
        checks.append(check_workers(queues, unhandled))
        checks.append(check_lag(queues, limits))
        found = reads.job_table_health(conn)
        health = asdict(found) if found else {}
        checks.append(check_vacuum(health, limits))
        checks.append(check_autovacuum(health))
    blockers = reads.vacuum_blockers(conn, limits.max_transaction_age_s, limits.max_xmin_age)
    checks.append(check_transactions([asdict(b) for b in blockers], limits))
    return checks


def check_server_version(version: int) -> Check:
    """PostgreSQL 13 or newer."""
    shown = f"{version // 10000}.{version % 10000}"
    if version < MIN_SERVER_VERSION:
        return Check("database", FAIL, f"PostgreSQL {shown} is too old", "upgrade to PostgreSQL 13 or newer")
    return Check("database", OK, f"reachable, PostgreSQL {shown}")


def check_migrations(pending: list[str]) -> Check:
    """No migration pending."""
    if pending:
        return Check("migrations", FAIL, f"{len(pending)} pending: {', '.join(pending)}", "run `sched migrate`")
    return Check("migrations", OK, "schema is current")


def check_workers(queues: list[dict[str, Any]], unhandled: list[dict[str, Any]] | None = None) -> Check:
    """Every unpaused queue with ready jobs has a live worker, and some live worker handles each ready task."""
    orphaned = [q for q in queues if q["live_workers"] == 0 and not q["paused"]]
    problems, fixes = [], []
    if orphaned:
        problems.append("no live worker for " + ", ".join(f"{q['queue']} ({q['ready']} ready)" for q in orphaned))
        fixes.append("start a worker: " + "; ".join(f"sched worker --queue {q['queue']}" for q in orphaned[:3]))
    if unhandled:
        problems.append(
            "no live worker handles "
            + ", ".join(f"task {u['task']} on {u['queue']} ({u['ready']} ready)" for u in unhandled[:3])
        )
        fixes.append(
            "start a worker with --app MODULE (or SCHED_APP) naming the module that registers "
            + ", ".join(sorted({u["task"] for u in unhandled})[:3])
        )
    if problems:
        return Check("workers", FAIL, "; ".join(problems), "; ".join(fixes))
    served = [q for q in queues if not q["paused"]]
    if not served:
        return Check("workers", OK, "no queue has ready jobs")
    return Check("workers", OK, f"{len(served)} queue(s) with ready jobs, each with a live worker")


def check_lag(queues: list[dict[str, Any]], limits: Thresholds) -> Check:
    """The oldest ready job of every unpaused queue waited less than the threshold."""
    served = [q for q in queues if not q["paused"]]
    if not served:
        return Check("lag", OK, "nothing is waiting")
    worst = max(served, key=lambda q: q["oldest_age_s"])
    detail = f"oldest ready job waited {format_duration(worst['oldest_age_s'])} on {worst['queue']}"
    if worst["oldest_age_s"] > limits.max_lag_s:
        return Check(
            "lag",
            FAIL,
            f"{detail} (limit {format_duration(limits.max_lag_s)})",
            "add workers or raise --concurrency for that queue; check `sched status` for stuck or slow tasks",
        )
    return Check("lag", OK, detail)


def check_vacuum(health: dict[str, Any], limits: Thresholds) -> Check:
    """Dead tuples on sched_jobs are not piling up faster than vacuum removes them."""
    live, dead = health["live"], health["dead"]
    ratio = dead / max(live + dead, 1)
    age = health["vacuumed_age_s"]
    when = f"last vacuumed {format_duration(age)} ago" if age is not None else "never vacuumed"
    detail = f"{dead} dead / {live} live tuples ({ratio:.0%} dead), {when}"
    fix = (
        "run VACUUM (ANALYZE) sched_jobs; end long transactions that hold it back; make autovacuum "
        "visit the table sooner: ALTER TABLE sched_jobs SET (autovacuum_vacuum_scale_factor = 0.02)"
    )
    if dead >= limits.min_dead_tuples and ratio > limits.max_dead_ratio:
        return Check("vacuum", FAIL, detail, fix)
    # Past autovacuum's own trigger (its threshold of dead tuples) and over the warning ratio, vacuum is behind
    # even if the table is still small: every claim walks past the dead rows.
    if dead > (health["threshold"] or 0) and ratio > limits.warn_dead_ratio:
        reason = f"over {limits.warn_dead_ratio:.0%} of the rows are dead, so claims read past them"
        return Check("vacuum", WARN, f"{detail}; {reason}", fix)
    return Check("vacuum", OK, detail)


def check_autovacuum(health: dict[str, Any]) -> Check:
    """Autovacuum is on for the server and for sched_jobs; report the settings that apply."""
    options = dict(opt.split("=", 1) for opt in health["reloptions"] if "=" in opt)
    scale = options.get("autovacuum_vacuum_scale_factor", str(health["scale_factor"]))
    threshold = options.get("autovacuum_vacuum_threshold", str(health["threshold"]))
    detail = f"scale factor {scale}, threshold {threshold}, {health['autovacuum_count']} autovacuum run(s)"
    problems, fixes = [], []
    if not health["autovacuum_on"]:
        problems.append("autovacuum is off for the server")
        fixes.append("set autovacuum = on in postgresql.conf (or schedule VACUUM sched_jobs every few minutes)")
    if options.get("autovacuum_enabled", "true").lower() in ("false", "off", "0", "no"):
        problems.append("autovacuum is disabled on sched_jobs")
        fixes.append("ALTER TABLE sched_jobs RESET (autovacuum_enabled)")
    if problems:
        return Check("autovacuum", FAIL, f"{'; '.join(problems)}; {detail}", "; ".join(fixes))
    return Check("autovacuum", OK, f"on; {detail}")


def check_transactions(blockers: list[dict[str, Any]], limits: Thresholds) -> Check:
    """No old transaction, prepared transaction, standby or slot holds back vacuum."""
    if not blockers:
        return Check("transactions", OK, f"no transaction older than {format_duration(limits.max_transaction_age_s)}")
    shown = []
    for b in blockers[:3]:
        age = f" open {format_duration(b['age_s'])}" if b["age_s"] is not None else ""
        label = f"{b['kind']} {b['who']}"
        if b["detail"]:
            label += f" ({b['detail']})"
        state = f", {b['state']}" if b["state"] else ""
        query = f": {b['query']}" if b["query"] else ""
        shown.append(f"{label}{age}{state}{query}")
    more = f" and {len(blockers) - 3} more" if len(blockers) > 3 else ""
    return Check(
        "transactions",
        FAIL,
        "; ".join(shown) + more,
        "end them (SELECT pg_terminate_backend(pid)) and fix the client that leaves transactions open; "
        "set idle_in_transaction_session_timeout; drop unused replication slots. They stop vacuum, and dead "
        "jobs slow every claim",
    )
