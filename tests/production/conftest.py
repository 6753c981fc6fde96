"""Fixtures of the production-setup tests: private PostgreSQL servers made from the system's programs (so a
test can add a standby, TLS or password rules), the ``sched`` CLI run against any URL, and the place where
runs leave their figures (tests/chaos/results/, like the chaos tests)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The worker tests' polling and health helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "worker"))

from support.cli import run_sched
from support.private_server import SYSTEM_BINARIES, SYSTEM_USER, Figures, PrivateServer, system_binaries_available

_figures = Figures("production setup figures")


@pytest.fixture
def make_server() -> Iterator[Callable[..., PrivateServer]]:
    """Build private servers from the system's PostgreSQL 15 (``init()`` only: the test launches them);
    every one is stopped and removed after the test."""
    if not system_binaries_available():
        pytest.skip(f"needs PostgreSQL 15 with pg_basebackup in {SYSTEM_BINARIES}")
    made: list[PrivateServer] = []

    def make(**options: Any) -> PrivateServer:
        server = PrivateServer(binaries=SYSTEM_BINARIES, run_as=SYSTEM_USER, **options)
        made.append(server)
        return server.init()

    yield make
    for server in made:
        server.stop()


CliRun = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def sched_at() -> CliRun:
    """Run the real ``sched`` CLI with ``SCHED_DATABASE_URL=url``: ``sched_at(url, "migrate")``."""
    return run_sched


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """Record a run's figures: a JSON file under tests/chaos/results/ and a line in the terminal summary."""
    return _figures.writer(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _figures.summarize(terminalreporter)
