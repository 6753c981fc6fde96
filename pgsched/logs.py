"""Log set-up for the CLI: loguru to stderr, human or JSON lines, with passwords redacted."""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger


def configure(verbosity: int = 0, *, json_lines: bool = False) -> str:
    """Enable sched's logs at a level chosen by -v/-q (0 is INFO) and return that level's name."""
    # Importing the worker package disables sched's logs (the library default): let that happen before enabling.
    import pgsched.worker  # noqa: F401

    level = {-2: "ERROR", -1: "WARNING", 0: "INFO", 1: "DEBUG"}.get(max(-2, min(verbosity, 1)), "INFO")
    logger.remove()
    logger.configure(patcher=_redact)
    if json_lines:
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="<dim>{time:YYYY-MM-DD HH:mm:ss.SSS}</dim> <level>{level: <7}</level> {message}",
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,  # diagnose would print local variables, DSNs included
        )
    logger.enable("pgsched")
    return level


def _redact(record: Any) -> None:
    from pgsched.db import redact

    record["message"] = redact(record["message"])
