"""The ``sched`` command line, split by command group: jobs (add, status, cancel, retry), worker (worker, reap),
queues, schedules and ops (migrate, cleanup, doctor, bench, demo). Each command parses its arguments, makes one
call into the core and prints; ``app.main`` turns errors into an ``Error:`` line and an exit code."""

from pgsched.cli.app import app, main

__all__ = ["app", "main"]
