"""The values sched passes around: a job to add, a claimed job, a job's detail, and input validation."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from pgsched.errors import InvalidInput


class JobState(StrEnum):
    """The states of a job (docs/protocol.md, "States"); the values are those of the sched_job_state type."""

    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
LIVE_STATES = frozenset({JobState.WAITING, JobState.QUEUED, JobState.RUNNING})


class OutcomeKind(StrEnum):
    """How a run ended, as its worker reports it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"  # given back without spending an attempt (shutdown, or claimed ahead and not started)


QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TASK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
PRIORITY_RANGE = (-1000, 1000)
MAX_ATTEMPTS_RANGE = (1, 1000)
MAX_TIMEOUT_S = 7 * 86400.0
MAX_KEY_LENGTH = 255
MAX_GROUP_LENGTH = 255
# Compact JSON; one encoder for every payload rather than one built per call (json.dumps with options).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# A \u0000 escape in JSON text, but not an escaped backslash followed by the letters "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# Names seen valid before: bulk inserts repeat a handful of queue and task names thousands of times.
_valid_queues: set[str] = set()
_valid_tasks: set[str] = set()


def check_queue(name: str) -> str:
    """Return ``name`` if it is a valid queue name."""
    if isinstance(name, str) and name in _valid_queues:
        return name
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise InvalidInput(f"invalid queue name {name!r}: use 1-64 letters, digits or _ . : -")
    if len(_valid_queues) < 4096:
        _valid_queues.add(name)
    return name


def check_task(name: str) -> str:
    """Return ``name`` if it is a valid task name."""
    if isinstance(name, str) and name in _valid_tasks:
        return name
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise InvalidInput(f"invalid task name {name!r}: use 1-128 letters, digits or _ . : -")
    if len(_valid_tasks) < 4096:
        _valid_tasks.add(name)
    return name


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"invalid {what} {value!r}: must be an integer from {low} to {high}")
    return value


def check_priority(value: Any) -> int:
    """Return ``value`` if it is a valid priority."""
    return _check_int(value, "priority", *PRIORITY_RANGE)


def check_max_attempts(value: Any) -> int:
    """Return ``value`` if it is a valid attempt budget."""
    return _check_int(value, "max attempts", *MAX_ATTEMPTS_RANGE)


def check_timeout(seconds: float) -> float:
    """Return ``seconds`` if it is a valid job timeout."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise InvalidInput(f"invalid timeout {seconds!r}: must be more than 0 and at most 7d")
    return float(seconds)


def check_key(key: Any) -> str | None:
    """Return ``key`` if it is a valid dedupe key (or None)."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or "\x00" in key or not _is_unicode(key):
        raise InvalidInput(f"invalid key: must be 1-{MAX_KEY_LENGTH} characters")
    return key


def check_group(group: Any) -> str | None:
    """Return ``group`` if it is a valid group name (or None): the same rule as a key."""
    if group is None:
        return None
    if (
        not isinstance(group, str)
        or not 1 <= len(group) <= MAX_GROUP_LENGTH
        or "\x00" in group
        or not _is_unicode(group)
    ):
        raise InvalidInput(f"invalid group: must be 1-{MAX_GROUP_LENGTH} characters")
    return group


def _is_unicode(text: str) -> bool:
    # Lone surrogates (from "\ud800" escapes or undecodable argv bytes) cannot be sent to PostgreSQL.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class JsonRefusal(StrEnum):
    """Why PostgreSQL cannot store a value as JSON (see ``encode_json``)."""

    NOT_JSON = "not_json"  # the encoder refused it: not a JSON type, NaN or infinity, a circular reference
    TOO_DEEP = "too_deep"
    NUL = "nul"  # jsonb and text refuse the NUL character
    LONE_SURROGATE = "lone_surrogate"  # not encodable as UTF-8
    TOO_LARGE = "too_large"


class Unstorable(NamedTuple):
    """A value ``encode_json`` refused: why, with the encoder's words (NOT_JSON) or the size in bytes
    (TOO_LARGE)."""

    why: JsonRefusal
    detail: str = ""
    size: int = 0


def encode_json(value: Any, max_bytes: int) -> str | Unstorable:
    """``value`` as compact JSON text no larger than ``max_bytes`` that PostgreSQL can store, or why it cannot
    be; each caller words the refusal its own way."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        return Unstorable(JsonRefusal.NOT_JSON, str(exc))
    except RecursionError:
        return Unstorable(JsonRefusal.TOO_DEEP)
    # The substring test first: the regular expression only decides whether a match is an escaped backslash.
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        return Unstorable(JsonRefusal.NUL)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        return Unstorable(JsonRefusal.LONE_SURROGATE)
    if size > max_bytes:
        return Unstorable(JsonRefusal.TOO_LARGE, size=size)
    return text


_PAYLOAD_REFUSALS = {
    JsonRefusal.NOT_JSON: "payload is not JSON-serializable: {detail}",
    JsonRefusal.TOO_DEEP: "payload is nested too deeply",
    JsonRefusal.NUL: "payload must not contain NUL characters (\\u0000)",
    JsonRefusal.LONE_SURROGATE: "payload must be valid Unicode (it holds a lone surrogate such as \\ud800)",
    JsonRefusal.TOO_LARGE: "payload is {size} bytes, over the limit of {max_bytes} (SCHED_MAX_PAYLOAD_BYTES)",
}


def encode_payload(payload: Any, max_bytes: int) -> str:
    """Serialize a payload to JSON text after checking it is an object no larger than ``max_bytes``."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a JSON object, not {_json_kind(payload)}")
    if not payload:
        return "{}"
    text = encode_json(payload, max_bytes)
    if isinstance(text, str):
        return text
    message = _PAYLOAD_REFUSALS[text.why]
    raise InvalidInput(message.format(detail=text.detail, size=text.size, max_bytes=max_bytes)) from None


def parse_payload(text: str, max_bytes: int) -> dict[str, Any]:
    """Parse JSON text into a payload object, with one-line errors for bad input."""
    if len(text.encode(errors="surrogatepass")) > max_bytes * 2 + 1024:
        raise InvalidInput(f"payload is over the limit of {max_bytes} bytes (SCHED_MAX_PAYLOAD_BYTES)")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        message = json_error_message(exc)
        raise InvalidInput(f"payload is not valid JSON: {message} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidInput("payload is nested too deeply") from None
    except ValueError:  # json turns numbers into ints, which refuse more than 4300 digits
        raise InvalidInput("payload is not valid JSON: a number has too many digits") from None
    encode_payload(value, max_bytes)
    return value


def json_error_message(exc: json.JSONDecodeError) -> str:
    """The decoder's message without its dangling "at" (as in "Unterminated string starting at")."""
    return exc.msg.removesuffix(" at")


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"payload is not valid JSON: {name} is not allowed")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


@dataclass(slots=True)
class NewJob:
    """A validated job ready to insert."""

    task: str
    payload_json: str = "{}"
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None
    delay_s: float | None = None
    max_attempts: int = 3
    timeout_s: float = 300.0
    key: str | None = None
    after: list[int] = field(default_factory=list)
    group: str | None = None
    # The trace context of the code that added it, as JSON text of propagation fields (README, "Tracing").
    trace_context: str | None = None

    def with_payload(self, payload_json: str) -> NewJob:
        """The same job with another payload (positional: a bulk insert makes one per job)."""
        return NewJob(
            self.task,
            payload_json,
            self.queue,
            self.priority,
            self.run_at,
            self.delay_s,
            self.max_attempts,
            self.timeout_s,
            self.key,
            self.after,
            self.group,
            self.trace_context,
        )


class Enqueued(NamedTuple):
    """The outcome of adding one job (a named tuple: a bulk insert makes one per job, so it must be cheap)."""

    id: int
    deduplicated: bool = False


@dataclass(slots=True)
class ClaimedJob:
    """A job a worker holds: what it needs to run it and to fence its outcome."""

    id: int
    task: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_s: float
    queue: str
    # The run's fence: every write the run makes must carry it (docs/protocol.md, "Leases and fencing").
    lease: int
    # When the worker received it (its monotonic clock); a job claimed ahead of a free slot waits from here.
    claimed_at: float = 0.0
    # The propagation fields of the code that added it, or None (README, "Tracing").
    trace_context: dict[str, Any] | None = None


@dataclass(slots=True)
class Outcome:
    """How one run ended, waiting in the worker's buffer to be written; fenced by the run's lease."""

    job_id: int
    lease: int
    kind: OutcomeKind
    result: Any = None
    error: str | None = None
    retryable: bool = True
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 3600.0
    retry_after_s: float | None = None  # a retry at this delay instead of the backoff (a handler's Retry)
