"""Fixtures of the chaos tests: a private PostgreSQL server a test may restart or cut off, and a place where the
runs leave their figures, which the terminal summary repeats so they show in CI logs without ``-s``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from private_server import Figures, PrivateServer, create_database, private_server

_figures = Figures("chaos figures")


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
    return _figures.writer(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _figures.summarize(terminalreporter)
