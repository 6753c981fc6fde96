"""Turn what a producer typed (options, a payload argument, ``--jsonl`` lines) into validated NewJobs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pgsched.durations import MAX_DELAY_S, parse_duration
from pgsched.errors import InvalidInput, NotFound
from pgsched.models import (
    NewJob,
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


@dataclass(frozen=True)
class JobDefaults:
    """Values a job takes from the command line (or settings) when it does not say otherwise."""

    task: str | None = None
    payload_json: str = "{}"
    queue: str = "default"
    priority: int = 0
    delay_s: float | None = None
    run_at: datetime | None = None
    max_attempts: int = 3
    timeout_s: float = 300.0
    key: str | None = None


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


def parse_at(text: str) -> datetime:
    """Parse ``--at``: ISO 8601; a time without a zone is local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"invalid time {text!r}: use ISO 8601, e.g. 2026-01-31T09:00:00+00:00") from None
    return moment.astimezone() if moment.tzinfo is None else moment


def build_job(
    defaults: JobDefaults, *, after: Iterable[int] = (), delay: str | None = None, at: str | None = None
) -> NewJob:
    """Validate the options of one ``add`` into a NewJob."""
    if delay is not None and at is not None:
        raise InvalidInput("use --delay or --at, not both")
    if defaults.task is None:
        raise InvalidInput("missing TASK (or --jsonl FILE)")
    after_ids = list(after)
    for job_id in after_ids:
        if not 0 < job_id < 2**63:
            raise InvalidInput(f"--after {job_id}: no such job")
    return NewJob(
        task=check_task(defaults.task),
        payload_json=defaults.payload_json,
        queue=check_queue(defaults.queue),
        priority=check_priority(defaults.priority),
        delay_s=parse_delay(delay) if delay is not None else defaults.delay_s,
        run_at=parse_at(at) if at is not None else defaults.run_at,
        max_attempts=check_max_attempts(defaults.max_attempts),
        timeout_s=check_timeout(defaults.timeout_s),
        key=check_key(defaults.key),
        after=after_ids,
    )


def with_timing(defaults: JobDefaults, delay: str | None, at: str | None) -> JobDefaults:
    """``defaults`` with the ``--delay`` or ``--at`` given on the command line, for every ``--jsonl`` line."""
    if delay is not None and at is not None:
        raise InvalidInput("use --delay or --at, not both")
    return replace(
        defaults,
        delay_s=parse_delay(delay) if delay is not None else None,
        run_at=parse_at(at) if at is not None else None,
    )


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


def existing_job_id(job_id: int) -> int:
    """``job_id`` if it could name a job; an id outside the column's range names none (NotFound, as for any
    unknown id)."""
    if not 0 < job_id < 2**63:
        raise NotFound(f"job {job_id} not found")
    return job_id


def parse_delay(text: str) -> float:
    seconds = parse_duration(text, what="delay")
    if seconds > MAX_DELAY_S:
        raise InvalidInput(f"invalid delay {text!r}: at most a year")
    return seconds


_LINE_FIELDS = {"payload", "task", "queue", "priority", "key", "delay", "run_at", "max_attempts", "timeout"}


def jobs_from_jsonl(lines: Iterable[str], defaults: JobDefaults, max_bytes: int) -> Iterator[NewJob]:
    """Validate ``--jsonl`` lines one by one; the first bad line raises InvalidInput naming its number."""
    # Command-line options apply to every line, so a bad one is no line's fault: check them once, up front.
    check_queue(defaults.queue)
    check_priority(defaults.priority)
    check_max_attempts(defaults.max_attempts)
    check_timeout(defaults.timeout_s)
    check_key(defaults.key)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield _job_from_line(line, defaults, max_bytes)
        except InvalidInput as exc:
            raise InvalidInput(f"line {number}: {exc.message}") from None


def _job_from_line(line: str, defaults: JobDefaults, max_bytes: int) -> NewJob:
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
    unknown = sorted(set(record) - _LINE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}")
    payload_json = encode_payload(record["payload"], max_bytes) if "payload" in record else defaults.payload_json
    delay = _field(record, "delay", (str, int, float))
    run_at = _field(record, "run_at", str)
    if delay is not None and run_at is not None:
        raise InvalidInput("use delay or run_at, not both")
    timeout = _field(record, "timeout", (str, int, float))
    return NewJob(
        task=check_task(_field(record, "task", str, defaults.task)),
        payload_json=payload_json,
        queue=check_queue(_field(record, "queue", str, defaults.queue)),
        priority=check_priority(_field(record, "priority", int, defaults.priority)),
        delay_s=parse_delay(str(delay)) if delay is not None else (None if run_at else defaults.delay_s),
        run_at=parse_at(run_at) if run_at is not None else (None if delay is not None else defaults.run_at),
        max_attempts=check_max_attempts(_field(record, "max_attempts", int, defaults.max_attempts)),
        timeout_s=check_timeout(parse_duration(str(timeout), what="timeout"))
        if timeout is not None
        else defaults.timeout_s,
        key=check_key(_field(record, "key", str, defaults.key)),
    )


def _field(record: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = record.get(name, default)
    if value is None:
        if name == "task":
            raise InvalidInput("missing task (give it in the line or as TASK)")
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidInput(f"invalid {name} {value!r}")
    return value
