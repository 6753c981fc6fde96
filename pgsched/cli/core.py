"""The CLI's one door into sched's core: each core module is imported when a command first uses it.

``sched --help`` lists every command without importing psycopg or Rich, and ``sched add`` imports only what adding
a job needs (tests/cli/test_startup.py holds both to that). Command modules therefore reach the core as
``core.repository``, ``core.render`` and so on, instead of importing it at their top."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from pgsched.settings import Settings, resolve_dsn

if TYPE_CHECKING:
    from pgsched import (
        admin,
        bench,
        bulk,
        client,
        dashboard,
        db,
        demo,
        doctor,
        jobspec,
        logs,
        migrate,
        models,
        render,
        repository,
        roles,
        schedules,
        web,
        why,
        worker,
    )
    from pgsched.worker import supervisor

__all__ = [
    "admin",
    "bench",
    "bulk",
    "client",
    "connect",
    "dashboard",
    "db",
    "demo",
    "doctor",
    "jobspec",
    "logs",
    "migrate",
    "models",
    "render",
    "repository",
    "roles",
    "schedules",
    "supervisor",
    "web",
    "why",
    "worker",
]
_ELSEWHERE = {"supervisor": "pgsched.worker.supervisor"}
_MODULES = {name: _ELSEWHERE.get(name, f"pgsched.{name}") for name in __all__ if name != "connect"}


def __getattr__(name: str) -> ModuleType:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_MODULES[name])
    globals()[name] = module
    return module


def connect(settings: Settings) -> db.Connection:
    """A connection to the database the settings name (the embedded server's when they name none)."""
    return importlib.import_module("pgsched.db").connect(resolve_dsn(settings))
