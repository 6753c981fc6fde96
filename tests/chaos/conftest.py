"""Fixtures of the chaos tests: a private PostgreSQL server a test may restart or cut off, and a place where the
runs leave their figures, which the terminal summary repeats so they show in CI logs without ``-s``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from private_server import PrivateServer, create_database, private_server

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_reported: list[tuple[str, str]] = []


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    """A private PostgreSQL server, stopped and removed after the test."""
    with private_server() as started:
        yield started


@pytest.fixture
def private_dsn(server: PrivateServer) -> str:
    """A migrated database on the private server."""
    return create_database(server)


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """Record a run's figures: a JSON file under tests/chaos/results/ and a line in the terminal summary."""

    def write(name: str, summary: str, figures: dict[str, Any]) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{name}.json"
        path.write_text(json.dumps({"test": request.node.nodeid, **figures}, indent=2, default=str) + "\n")
        _reported.append((request.node.nodeid, summary))
        return path

    return write


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reported:
        return
    terminalreporter.section("chaos figures")
    for nodeid, summary in _reported:
        terminalreporter.write_line(f"{nodeid}: {summary}")
