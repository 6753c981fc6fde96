"""sched: a PostgreSQL-backed job queue for the shell and for Python."""

__version__ = "0.1.0"

# A library stays quiet unless its application asks for logs. Everything that logs lives in pgsched.worker,
# which disables sched's loguru logger on import, so `sched add` and `sched --help` do not pay for loguru.


def __getattr__(name: str) -> object:
    """``pgsched.Client`` and ``pgsched.Enqueued``, imported on first use so that ``import pgsched`` stays cheap."""
    if name in ("Client", "Enqueued"):
        from pgsched import client

        return getattr(client, name)
    raise AttributeError(f"module 'pgsched' has no attribute {name!r}")
