"""Locate the shipped ``sql/`` folder and parse the query files of ``sql/queries/`` into named queries, once."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


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


def query(name: str) -> str:
    """The text of one named query."""
    return queries()[name]
