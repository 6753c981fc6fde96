"""The one way a job is built: from ``sched add`` options, from ``--jsonl`` lines and from ``Client.enqueue`` /
``enqueue_many`` arguments alike. One set of fields, one message per rule, and the defaults of settings."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from pgsched.durations import MAX_DELAY_S, to_seconds
from pgsched.errors import InvalidInput, NotFound
from pgsched.models import (
    NewJob,
    check_group,
    check_key,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task,
    check_timeout,
    encode_payload,
    json_error_message,
    parse_payload,
)
from pgsched.settings import Settings

# What a job may say about itself, wherever it comes from.
FIELDS = frozenset("task payload queue priority delay run_at max_attempts timeout key after group".split())
# Job ids are bigints: a number outside that range names no job.
MAX_JOB_ID = 2**63 - 1
_DECLARED = Settings()


@dataclass(frozen=True)
class Wording:
    """How a source names the fields that its messages mention (an option on the command line, an argument in
    Python), so that each rule has one message that speaks the caller's words."""

    delay: str = "delay"
    run_at: str = "run_at"
    after: str = "after"
    missing_task: str = "missing task"


API = Wording()
JSONL = Wording(missing_task="missing task (give it in the line or as TASK)")
COMMAND_LINE = Wording(delay="--delay", run_at="--at", after="--after", missing_task="missing TASK (or --jsonl FILE)")

# The checks of JobDefaults' fields (see JobDefaults.checked); a job's delay, time to run and dependencies are
# checked only where given.
_DEFAULT_CHECKS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("task", check_task),
    ("queue", check_queue),
    ("priority", check_priority),
    ("max_attempts", check_max_attempts),
    ("timeout_s", check_timeout),
    ("key", check_key),
    ("group", check_group),
)


@dataclass(frozen=True)
class JobDefaults:
    """What a job takes for a field it does not give: the settings' attempts, timeout and payload limit and, for
    ``--jsonl`` lines, the command line's options."""

    task: str | None = None
    payload_json: str = "{}"
    queue: str = "default"
    priority: int = 0
    delay_s: float | None = None
    run_at: datetime | None = None
    max_attempts: int = _DECLARED.max_attempts
    timeout_s: float = _DECLARED.job_timeout
    key: str | None = None
    after: tuple[int, ...] = ()
    group: str | None = None
    max_payload_bytes: int = _DECLARED.max_payload_bytes
    # Not a field a job gives: the trace context of the call that adds it (README, "Tracing").
    trace_context: str | None = None

    @cached_property
    def checked(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The fields a job takes from these defaults, each checked once (not once per job): the values as a
        job stores them, and the message of each that its check refuses, in the order ``build_job`` reports
        them (a field the job gives itself is not the default's fault). A task of None is not checked: a job
        without one is missing its task."""
        values: dict[str, Any] = {}
        faults: dict[str, str] = {}
        for name, check in _DEFAULT_CHECKS:
            value = getattr(self, name)
            if name == "task" and value is None:
                continue
            try:
                values[name] = check(value)
            except InvalidInput as exc:
                values[name] = value  # never used: a job that does not give the field is refused
                faults[name] = exc.message
        return values, faults

    @classmethod
    def from_settings(cls, settings: Settings) -> JobDefaults:
        """The defaults that ``settings`` (SCHED_MAX_ATTEMPTS, SCHED_JOB_TIMEOUT, SCHED_MAX_PAYLOAD_BYTES) give."""
        return cls(
            max_attempts=settings.max_attempts,
            timeout_s=settings.job_timeout,
            max_payload_bytes=settings.max_payload_bytes,
        )


def merge(defaults: JobDefaults, spec: Mapping[str, Any], wording: Wording = API) -> JobDefaults:
    """``defaults`` with the fields ``spec`` gives (a field given as None is not given), each parsed and checked."""
    changes = _given_fields(spec, defaults.max_payload_bytes, wording)
    return replace(defaults, **changes) if changes else defaults


def build_job(spec: Mapping[str, Any], defaults: JobDefaults, wording: Wording = API) -> NewJob:
    """A validated NewJob from the fields ``spec`` gives and ``defaults`` for the rest."""
    given = _given_fields(spec, defaults.max_payload_bytes, wording)
    task = given.get("task", defaults.task)
    if task is None:
        raise InvalidInput(wording.missing_task)
    checked, faults = defaults.checked
    for name, message in faults.items():
        if name not in given:
            raise InvalidInput(message)
    return NewJob(
        task=task,
        payload_json=given.get("payload_json", defaults.payload_json),
        queue=given.get("queue", checked["queue"]),
        priority=given.get("priority", checked["priority"]),
        delay_s=given.get("delay_s", defaults.delay_s),
        run_at=given.get("run_at", defaults.run_at),
        max_attempts=given.get("max_attempts", checked["max_attempts"]),
        timeout_s=given.get("timeout_s", checked["timeout_s"]),
        key=given.get("key", checked["key"]),
        after=list(given.get("after", defaults.after)),
        group=given.get("group", checked["group"]),
        trace_context=defaults.trace_context,
    )


def _given_fields(spec: Mapping[str, Any], max_payload_bytes: int, wording: Wording) -> dict[str, Any]:
    """The fields ``spec`` gives (not None), parsed and checked, under JobDefaults' names."""
    if not FIELDS.issuperset(spec):
        raise InvalidInput(f"unknown field {sorted(set(spec) - FIELDS)[0]!r}")
    given = {name: value for name, value in spec.items() if value is not None}
    changes: dict[str, Any] = {}
    if "task" in given:
        changes["task"] = check_task(given["task"])
    if "payload" in given:
        changes["payload_json"] = payload_json(given["payload"], max_payload_bytes)
    if "queue" in given:
        changes["queue"] = check_queue(given["queue"])
    if "priority" in given:
        changes["priority"] = check_priority(given["priority"])
    if "delay" in given or "run_at" in given:
        if "delay" in given and "run_at" in given:
            raise InvalidInput(f"use {wording.delay} or {wording.run_at}, not both")
        changes["delay_s"] = delay_seconds(given["delay"]) if "delay" in given else None
        changes["run_at"] = run_time(given["run_at"], wording) if "run_at" in given else None
    if "max_attempts" in given:
        changes["max_attempts"] = check_max_attempts(given["max_attempts"])
    if "timeout" in given:
        changes["timeout_s"] = check_timeout(to_seconds(given["timeout"], "timeout"))
    if "key" in given:
        changes["key"] = check_key(given["key"])
    if "group" in given:
        changes["group"] = check_group(given["group"])
    if "after" in given:
        changes["after"] = job_ids(given["after"], wording)
    return changes


def payload_json(payload: Any, max_bytes: int) -> str:
    """A payload (a JSON object: a dict or another mapping) as compact JSON text, at most ``max_bytes`` long."""
    plain = dict(payload) if isinstance(payload, Mapping) and not isinstance(payload, dict) else payload
    return encode_payload(plain, max_bytes)


def delay_seconds(value: Any) -> float:
    """A delay (seconds, a timedelta or a duration string) from 0 to a year."""
    seconds = to_seconds(value, "delay")
    shown = repr(value) if isinstance(value, (str, timedelta)) else value
    if not math.isfinite(seconds):
        raise InvalidInput(f"invalid delay {shown}")
    if seconds < 0:
        raise InvalidInput(f"invalid delay {shown}: must not be negative")
    if seconds > MAX_DELAY_S:
        raise InvalidInput(f"invalid delay {shown}: at most a year")
    return seconds


def run_time(value: Any, wording: Wording = API) -> datetime:
    """A time to run at: a timezone-aware datetime, or ISO 8601 text (without a zone, local time); at most as
    far ahead as the longest delay."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(f"{wording.run_at} must be a timezone-aware datetime")
        moment, shown = value, value.isoformat()
    elif isinstance(value, str):
        moment, shown = parse_at(value), repr(value)
    else:
        raise InvalidInput(f"invalid time {value!r}: use ISO 8601, e.g. 2026-01-31T09:00:00+00:00")
    try:
        ahead = (moment - datetime.now(moment.tzinfo)).total_seconds()
    except OverflowError:
        ahead = math.inf
    if ahead > MAX_DELAY_S:
        raise InvalidInput(f"invalid time {shown}: at most a year ahead")
    return moment


def parse_at(text: str) -> datetime:
    """Parse ``--at``: ISO 8601; a time without a zone is local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment.astimezone() if moment.tzinfo is None else moment
    except (ValueError, OverflowError):
        raise InvalidInput(f"invalid time {text!r}: use ISO 8601, e.g. 2026-01-31T09:00:00+00:00") from None


def job_ids(value: Any, wording: Wording = API) -> tuple[int, ...]:
    """The ids of jobs to run after: positive integers; one outside the range of ids names no job."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInput(f"{wording.after} must hold job ids, not {value!r}")
    ids = tuple(value)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise InvalidInput(f"{wording.after} must hold job ids, not {list(ids)!r}")
    for job_id in ids:
        if not 0 < job_id <= MAX_JOB_ID:
            raise InvalidInput(f"{wording.after} {job_id}: no such job")
    return ids


def existing_job_id(job_id: int) -> int:
    """``job_id`` if it could name a job; an id outside the column's range names none (NotFound, as for any
    unknown id)."""
    if not 0 < job_id <= MAX_JOB_ID:
        raise NotFound(f"job {job_id} not found")
    return job_id


# --- the command line ------------------------------------------------------------------------------------


def read_payload_argument(value: str | None, max_bytes: int) -> str:
    """Resolve ``--payload``: ``-`` reads stdin, an existing path reads the file, anything else is inline JSON."""
    if value is None:
        return "{}"
    if value == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise InvalidInput("the payload on stdin is not UTF-8 text") from None
        except OSError as exc:
            raise InvalidInput(f"cannot read the payload from stdin: {exc.strerror or exc}") from None
    elif value.lstrip()[:1] in ("{", "[", '"') or not _is_file(value):
        text = value
        if not _looks_like_json(value):
            raise InvalidInput(f"payload {_clip(value)} is neither JSON nor a readable file")
    else:
        try:
            text = Path(value).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read payload file {value!r}: {exc}") from None
    return encode_payload(parse_payload(text, max_bytes), max_bytes)


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):
        return False


def _looks_like_json(value: str) -> bool:
    try:
        json.loads(value)
    except (ValueError, RecursionError):
        return value.lstrip()[:1] in ("{", "[", '"')
    return True


def _clip(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def read_lines(path: str) -> list[str]:
    """The lines of ``path`` (``-`` for stdin), as UTF-8 text."""
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise InvalidInput(f"cannot read {path!r}: {exc.strerror}") from None
    with stream:
        try:
            return stream.readlines()
        except UnicodeDecodeError:
            raise InvalidInput(f"{path!r} is not UTF-8 text") from None


def jobs_from_jsonl(lines: Iterable[str], defaults: JobDefaults) -> Iterator[NewJob]:
    """Validate ``--jsonl`` lines one by one; the first bad line raises InvalidInput naming its number."""
    # Command-line options apply to every line, so a bad one is no line's fault: check them once, up front.
    for name, message in defaults.checked[1].items():
        if name != "task":
            raise InvalidInput(message)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield build_job(_record(line), defaults, JSONL)
        except InvalidInput as exc:
            raise InvalidInput(f"line {number}: {exc.message}") from None


def _record(line: str) -> dict[str, Any]:
    try:
        # Without its line break, an error at the end of the line points at the line, not at the next one.
        record = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {json_error_message(exc)} at column {exc.colno}") from None
    except RecursionError:
        raise InvalidInput("nested too deeply") from None
    except ValueError:  # json turns numbers into ints, which refuse more than 4300 digits
        raise InvalidInput("not valid JSON: a number has too many digits") from None
    if not isinstance(record, dict):
        raise InvalidInput("each line must be a JSON object")
    if "task" in record and record["task"] is None:
        raise InvalidInput(JSONL.missing_task)
    return record
