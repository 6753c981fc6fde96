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
    # What the check found, as plain data for --json (the horizon check's holders and their commands).
    data: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        """Whether this check makes the doctor exit 1."""
        return self.status == FAIL


@dataclass
class Thresholds:
    """The limits the checks judge against."""

    max_lag_s: float = 60.0
    # A holder of vacuum's horizon is a warning past either of these (--horizon-age, --horizon-xids) ...
    horizon_age_s: float = 60.0
    horizon_xids: int = 100_000
    # ... and a failure past these, when it holds back sched's tables directly.
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
        checks = [{k: v for k, v in asdict(check).items() if k != "data" or v is not None} for check in self.checks]
        return {"ok": self.ok, "checks": checks}


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
    queues: list[dict[str, Any]] = []
    has_jobs = reads.table_exists(conn, "sched_jobs")
    if not has_jobs:
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
    checks.append(check_horizon(*horizon_facts(conn, queues if has_jobs else None, limits), limits))
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


# What vacuum of sched's tables has to wait for, by PostgreSQL's rules (docs/design.md, "Vacuum horizon").
HORIZON_RULES = (
    "vacuum of sched's tables may not remove what these may still see: this database's open transactions and "
    "snapshots; transaction ids held in any database (a session's or a prepared transaction's: every snapshot "
    "taken here counts them as running, so any statement running here pins the horizon at them); replication "
    "slots' xmin and standbys' hot_standby_feedback, server-wide. Other databases' snapshots without a "
    "transaction id hold nothing here, and a slot's catalog_xmin holds back only the system catalogs"
)
# An entry of sched_jobs_ready (queue, priority, run_at, id) with a short queue name takes about 44 bytes with
# its tuple header and line pointer; B-tree leaves are filled to 90%, so about 160 fit in an 8 kB page.
READY_ENTRY_BYTES = 44
LEAF_FILL = 0.9


def horizon_facts(
    conn: Any, queues: list[dict[str, Any]] | None, limits: Thresholds
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """What holds vacuum's horizon, what the role cannot see of it, and (with the sched tables) how the queue
    is affected: sched_jobs' dead tuples and sizes, and, while something holds sched's tables, what finding the
    next ready job of the busiest queue reads. Each is one short autocommit statement: no snapshot outlives it."""
    from pgsched.repository import reads

    # The failure limits may be the lower ones: what is past them must be found too.
    max_age_s = min(limits.horizon_age_s, limits.max_transaction_age_s)
    max_xids = min(limits.horizon_xids, limits.max_xmin_age)
    holders = [asdict(h) for h in reads.horizon_holders(conn, max_age_s, max_xids)]
    visibility = asdict(reads.horizon_visibility(conn))
    if queues is None:
        return holders, visibility, None
    impact: dict[str, Any] = asdict(reads.ready_index_size(conn))
    impact["ready"] = sum(q["ready"] for q in queues)
    block = impact["block_size"]
    per_page = int((block - 40) * LEAF_FILL) // READY_ENTRY_BYTES
    # The meta page and a root, then the leaves the live entries need.
    impact["ready_index_needed_bytes"] = (2 + -(-impact["ready"] // per_page)) * block
    impact["probe"] = None
    if queues and any(h["holds_jobs"] for h in holders):
        busiest = max(queues, key=lambda q: q["ready"])["queue"]
        impact["probe"] = probe_summary(busiest, reads.ready_index_probe(conn, busiest))
    return holders, visibility, impact


def probe_summary(queue: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The pages (index and table) that finding the next ready job of ``queue`` touched, the time it took, and
    the index the plan walked, from EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)."""
    top = plan.get("Plan", {})
    indexes = []
    stack = [top]
    while stack:
        node = stack.pop()
        if "Index Name" in node:
            indexes.append(node["Index Name"])
        stack.extend(node.get("Plans", []))
    return {
        "queue": queue,
        "pages": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "ms": plan.get("Execution Time"),
        "index": indexes[0] if indexes else None,
    }


def check_horizon(
    holders: list[dict[str, Any]],
    visibility: dict[str, Any],
    impact: dict[str, Any] | None,
    limits: Thresholds,
) -> Check:
    """Nothing holds back vacuum of sched's tables for longer than the horizon thresholds: a warning naming each
    holder and the command that would end it (printed, never run); a failure when one in this database, a slot
    or a standby is past --max-transaction-age or 10M transactions."""
    blocking = [h for h in holders if h["holds_jobs"]]
    catalog_only = [h for h in holders if not h["holds_jobs"]]
    limit = f"{format_duration(limits.horizon_age_s)} or {limits.horizon_xids:,} transactions"
    lines = [describe_holder(h) for h in blocking]
    lines += [describe_holder(h) + ": holds back only the system catalogs, not sched's tables" for h in catalog_only]
    hidden = hidden_note(visibility)
    notes = [hidden] if hidden else []
    affected = describe_impact(impact) if impact else None
    data = {
        "holders": [{**h, "command": end_command(h)} for h in holders],
        "visibility": visibility,
        "impact": impact,
    }
    if not blocking:
        found = f"nothing holds back vacuum of sched's tables for more than {limit}"
        detail = "; ".join([found, *lines, *notes, *([affected] if affected else [])])
        return Check("transactions", OK, detail, data=data)
    head = f"held back for more than {limit} by:"
    detail = "\n".join([head, *(f"- {line}" for line in lines), *notes, *([affected] if affected else [])])
    commands = [end_command(h) for h in blocking]
    fix = "\n".join(
        [
            *commands,
            "(printed, never run: check what each one is first; then fix the client that leaves transactions "
            "open, e.g. with idle_in_transaction_session_timeout)",
            HORIZON_RULES[0].upper() + HORIZON_RULES[1:] + ".",
        ]
    )
    severe = [h for h in blocking if directly_holds(h) and past_failure_limit(h, limits)]
    return Check("transactions", FAIL if severe else WARN, detail, fix, data=data)


def directly_holds(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` pins sched's tables by itself, not only while a statement runs here."""
    return holder["this_database"] or holder["kind"] == "standby" or holder["kind"].endswith("replication slot")


def past_failure_limit(holder: dict[str, Any], limits: Thresholds) -> bool:
    """Whether ``holder`` is older than the failure limits (--max-transaction-age, or 10M transactions)."""
    old = holder["age_s"] is not None and holder["age_s"] > limits.max_transaction_age_s
    return old or (holder["xmin_age"] or 0) > limits.max_xmin_age


def describe_holder(holder: dict[str, Any]) -> str:
    """One line for people: what the holder is, who runs it, how old it is, and its query's head."""
    facts = []
    if holder["application_name"]:
        facts.append(holder["application_name"])
    if holder["role"]:
        facts.append(f"user {holder['role']}")
    if holder["client_addr"]:
        facts.append(holder["client_addr"])
    if holder["state"]:
        facts.append(holder["state"])
    if holder["database"] and not holder["this_database"]:
        facts.append(f"database {holder['database']}")
    if holder["hidden"]:
        facts.append("start, state and query hidden")
    kind, who = holder["kind"], holder["who"]
    name = f"{kind} {who}" if kind in ("session", "standby") else f"{kind} {sql_literal(who)}"
    text = name + (f" ({', '.join(facts)})" if facts else "")
    ages = []
    if holder["age_s"] is not None:
        verb = "prepared" if kind == "prepared transaction" else "transaction open"
        ages.append(f"{verb} {format_duration(holder['age_s'])}")
    if holder["xmin_age"] is not None:
        ages.append(f"xmin {holder['xmin_age']:,} transactions old")
    if holder["catalog_xmin_age"] is not None:
        ages.append(f"catalog_xmin {holder['catalog_xmin_age']:,} transactions old")
    if ages:
        text += " " + ", ".join(ages)
    if kind in ("session", "prepared transaction") and not holder["this_database"]:
        text += " (its transaction id pins the horizon while any statement runs here)"
    if holder["query"]:
        text += f": {holder['query']}"
    return text


def end_command(holder: dict[str, Any]) -> str:
    """The statement that would end ``holder``, for an operator to run after checking what it is."""
    kind, who = holder["kind"], holder["who"]
    elsewhere = f" -- connected to database {holder['database']}" if not holder["this_database"] else ""
    if kind == "session":
        if holder["state"] == "active":
            return f"SELECT pg_cancel_backend({who});  -- ends its statement; pg_terminate_backend({who}) if not"
        return f"SELECT pg_terminate_backend({who});"
    if kind == "prepared transaction":
        return f"ROLLBACK PREPARED {sql_literal(who)};{elsewhere}"
    if kind.endswith("replication slot"):
        note = "  -- once the standby or subscriber using it is stopped" if holder["state"] == "active" else ""
        if kind.startswith("logical") and holder["database"] and not holder["this_database"]:
            note = elsewhere + (" once its subscriber is stopped" if holder["state"] == "active" else "")
        return f"SELECT pg_drop_replication_slot({sql_literal(who)});{note}"
    where = holder["application_name"] or holder["client_addr"] or "the standby"
    return (
        f"-- on standby {where}: end its long query (pg_stat_activity there, oldest backend_xmin), "
        "or set hot_standby_feedback = off there"
    )


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def hidden_note(visibility: dict[str, Any]) -> str | None:
    """What the role cannot see, or None when it sees everything."""
    if visibility["sees_all"] or not visibility["hidden_here"] + visibility["hidden_elsewhere"]:
        return None
    return (
        f"{visibility['hidden_here']} session(s) of other roles in this database and "
        f"{visibility['hidden_elsewhere']} elsewhere show {visibility['role']} no start time, state, address or "
        "query, so they are judged by transaction count only (grant pg_read_all_stats to see them)"
    )


def describe_impact(impact: dict[str, Any]) -> str:
    """How the queue is affected, as measured: sched_jobs' dead tuples and sizes, the ready index against what
    its ready jobs need, and what finding the next ready job read."""
    tuples = f"{impact['dead']:,} dead / {impact['live']:,} live tuples"
    text = f"sched_jobs: {tuples}, table {format_bytes(impact['table_bytes'])}"
    if impact["ready_index_bytes"] is not None:
        text += (
            f"; ready index {format_bytes(impact['ready_index_bytes'])} for {impact['ready']:,} ready job(s), "
            f"which need about {format_bytes(impact['ready_index_needed_bytes'])}"
        )
    probe = impact.get("probe")
    if probe:
        via = f" through {probe['index']}" if probe["index"] else " without an index"
        ms = f" in {probe['ms']:.2f} ms" if probe["ms"] is not None else ""
        text += (
            f"; reading {probe['queue']}'s ready jobs from the front{via} (as a worker's full pass does) touched "
            f"{probe['pages']:,} page(s){ms} to find the first"
        )
    return text


def format_bytes(size: int) -> str:
    """Bytes for people: ``1536`` becomes ``1.5 kB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
