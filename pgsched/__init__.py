"""sched: a PostgreSQL-backed job queue for the shell and for Python."""

from loguru import logger as _logger

__version__ = "0.1.0"

# A library stays quiet unless its application asks for logs; the CLI enables this.
_logger.disable("pgsched")
