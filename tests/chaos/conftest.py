"""Fixtures of the chaos tests: a place where the runs leave their figures, which the terminal summary repeats so
they show in CI logs without ``-s``. The private server a test may restart or cut off (``server``,
``private_dsn``) comes from tests/conftest.py."""

from __future__ import annotations

from typing import Any

import pytest
from support.private_server import Figures

_figures = Figures("chaos figures")


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """Record a run's figures: a JSON file under tests/chaos/results/ and a line in the terminal summary."""
    return _figures.writer(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _figures.summarize(terminalreporter)
