"""The exceptions sched raises; the CLI turns each into one ``Error:`` line and an exit code."""


class SchedError(Exception):
    """sched failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(SchedError):
    """The input is invalid."""

    exit_code = 2


class KeyTaken(InvalidInput):
    """A live job holds this dedupe key."""


class NotFound(SchedError):
    """Not found."""


class DatabaseUnavailable(SchedError):
    """The database cannot be reached."""


class DatabaseError(SchedError):
    """The database refused the operation."""


class MigrationsPending(SchedError):
    """The database schema is not current; run `sched migrate`."""


class QueueFull(SchedError):
    """The queue is full."""


class WrongState(SchedError):
    """The job is not in a state that allows this."""


class EmbeddedUnavailable(SchedError):
    """SCHED_DATABASE_URL is not set and the embedded PostgreSQL is not installed (pip install 'pgsched[embedded]')."""
