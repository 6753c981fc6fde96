"""A migration that needs a table lock held by someone else's long transaction (a report, a session left idle in
a transaction) must not stall the queue: while it waits for its ACCESS EXCLUSIVE lock, every claim and add queues
behind it. It waits a short while, lets go so they pass, and tries again (docs/design.md: migrate.py)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import psycopg

from pgsched import db, migrate, repository
from pgsched.models import NewJob
from pgsched.sqlfiles import sql_dir


def test_adds_go_on_while_a_migration_waits_for_a_long_transaction(empty_dsn: str, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for path in sorted(sql_dir().glob("000[1-4]_*.sql")):
        shutil.copy(path, old / path.name)
    with db.connect(empty_dsn) as conn:
        migrate.apply(conn, old)
        repository.enqueue(conn, NewJob(task="t"))
    report = psycopg.connect(empty_dsn)  # a transaction that reads the jobs and stays open
    report.execute("SELECT count(*) FROM sched_jobs").fetchall()
    ending = threading.Timer(12, report.rollback)
    ending.start()
    applied: list = []

    def migrate_to_newest() -> None:
        with db.connect(empty_dsn) as conn:
            applied.extend(migrate.apply(conn))

    migrating = threading.Thread(target=migrate_to_newest)
    migrating.start()
    try:
        time.sleep(1.5)  # the migration now waits for its lock
        with db.connect(empty_dsn) as conn:
            started = time.monotonic()
            repository.enqueue(conn, NewJob(task="t"))
            took = time.monotonic() - started
        assert took < 5, f"an add waited {took:.1f}s behind a migration waiting for a lock"
    finally:
        ending.join()
        migrating.join(60)
        report.close()
    assert [m.version for m in applied][:1] == [5]
