"""sched: a PostgreSQL-backed job queue for the shell and for Python."""

from loguru import logger as _logger

__version__ = "0.1.0"

# A library stays quiet unless its application asks for logs; the CLI enables this.
_logger.disable("pgsched")


def __getattr__(name: str) -> object:
    """``pgsched.Client`` and ``pgsched.Enqueued``, imported on first use so that ``import pgsched`` stays cheap."""
    if name in ("Client", "Enqueued"):
        from pgsched import client

        return getattr(client, name)
    raise AttributeError(f"module 'pgsched' has no attribute {name!r}")
