"""Locate the shipped ``sql/`` folder, parse the query files of ``sql/queries/`` into named queries once, and
qualify them with the installation's schema (``SCHED_SCHEMA``, default ``public``), so that no query depends on
the caller's ``search_path`` and two schemas in one database are two independent installations."""

from __future__ import annotations

import os
import re
from functools import cache
from importlib import resources
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

SCHEMA_ENV = "SCHED_SCHEMA"
DEFAULT_SCHEMA = "public"
# A schema name that needs no quoting anywhere: in identifiers, in regclass literals, in channel names.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
# The objects of an installation that queries name, as identifiers or inside regclass literals. The staging
# table sched_jobs_incoming is temporary (pg_temp) and is not one of them.
_OBJECTS = re.compile(
    r"\b(sched_(?:jobs|job_deps|workers|queues|schedules|migrations|job_state|job_lease_seq|jobs_id_seq"
    r"|claim_limited|queue_running|group_buckets|group_firsts|has_grouped_jobs|jobs_all|job_history|history|history_truncate"
    r"|finish_succeeded))\b"
)
_SCHEMA_TOKEN = re.compile(r"\bsched_schema\b")
_ROLES = re.compile(r"\b(sched_(?:producer|worker))\b")
# Names shared by every session of a database: notification channels and advisory-lock keys.
_SHARED_NAMES = re.compile(r"'(sched_(?:wakeup|cancel|reaper|migrate))'")


@cache
def sql_dir() -> Path:
    """The folder holding migrations and queries: inside the wheel, or the repository's top level."""
    shipped = resources.files("pgsched") / "sql"
    if shipped.is_dir():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / "sql"


def query_files() -> list[Path]:
    """The query files, one per entity (jobs, queues, schedules, workers, reads, admin), by name."""
    return sorted((sql_dir() / "queries").glob("*.sql"))


@cache
def queries() -> dict[str, str]:
    """Every named query of every query file, keyed by name."""
    named: dict[str, str] = {}
    for path in query_files():
        parts = _HEADER.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise RuntimeError(f"query {name} is defined twice (again in {path.name})")
            # Descriptions stay in the file for readers; the server gets only the statement.
            lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
            named[name] = "\n".join(lines).strip().rstrip(";")
    return named


_chosen: dict[str, str] = {}


def use_schema(name: str) -> None:
    """Make ``name`` this process's schema (settings call this once they are read, ``.env`` included)."""
    _chosen["schema"] = _checked_schema(name)


def schema() -> str:
    """The schema of this process's sched installation: as the settings chose, else ``SCHED_SCHEMA``, else
    ``public``."""
    return _chosen.get("schema") or _checked_schema(os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA)


@cache
def _checked_schema(name: str) -> str:
    # Checked once per name: every query looks the schema up.
    if not SCHEMA_NAME.fullmatch(name):
        from pgsched.errors import InvalidInput

        raise InvalidInput(
            f"invalid schema name {name!r} ({SCHEMA_ENV}): use 1-48 lowercase letters, digits or _, "
            "not starting with a digit"
        )
    return name


def shared_name(name: str, schema_name: str | None = None) -> str:
    """A channel or lock name of the installation in ``schema_name``: the bare name in ``public`` (as before
    schemas existed), suffixed with the schema elsewhere, so installations never hear or block each other."""
    schema_name = schema_name or schema()
    return name if schema_name == DEFAULT_SCHEMA else f"{name}.{schema_name}"


def role_name(name: str, schema_name: str | None = None) -> str:
    """A group role of the installation in ``schema_name``: ``sched_worker`` in ``public`` (as before schemas
    existed), ``sched_worker_<schema>`` elsewhere, so a login given one installation's role reaches no other's
    tables. (Roles are server-wide: installations in ``public`` of several databases share theirs.)"""
    schema_name = schema_name or schema()
    return name if schema_name == DEFAULT_SCHEMA else f"{name}_{schema_name}"


def name_roles(text: str, schema_name: str | None = None) -> str:
    """``text`` (the roles script) with the installation's own role names."""
    return _ROLES.sub(lambda m: role_name(m.group(1), schema_name), text)


def qualify(text: str, schema_name: str) -> str:
    """``text`` with every sched object named in ``schema_name`` and every shared name made its own;
    ``sched_schema`` stands for the schema itself."""
    text = _OBJECTS.sub(rf"{schema_name}.\1", text)
    text = _SCHEMA_TOKEN.sub(schema_name, text)
    return _SHARED_NAMES.sub(lambda m: f"'{shared_name(m.group(1), schema_name)}'", text)


@cache
def _qualified(schema_name: str) -> dict[str, str]:
    return {name: qualify(text, schema_name) for name, text in queries().items()}


def query(name: str) -> str:
    """The text of one named query, for this process's schema."""
    return _qualified(schema())[name]
