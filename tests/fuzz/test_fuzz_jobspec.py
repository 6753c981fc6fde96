"""Property tests of the add path in-process: whatever a producer types becomes a job the database will accept,
or a one-line InvalidInput; a bad ``--jsonl`` line is reported by its number."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pgsched.errors import InvalidInput
from pgsched.jobspec import COMMAND_LINE, JobDefaults, build_job, jobs_from_jsonl, read_payload_argument
from pgsched.models import (
    NewJob,
    check_key,
    check_queue,
    check_task,
    encode_payload,
    parse_payload,
)

MAX_BYTES = 4096
# The CHECK constraints of sql/0001_jobs.sql, restated: anything build_job lets through must satisfy them.
DB_QUEUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
DB_TASK = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

name_chars = st.sampled_from([*list("abcXYZ019_.:-"), " ", "'", '"', ";", "$", "\\", "é", "日", "\x00", "\n", "/"])
names = st.one_of(st.lists(name_chars, max_size=140).map("".join), st.text(max_size=20))
keys = st.one_of(st.none(), st.text(max_size=300), st.just("\ud800"), st.just("a\x00b"))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\x00", "\\u0000", "\ud800", "\udfff", "'; DROP TABLE sched_jobs; --", "$$"]),
)
# Text PostgreSQL stores as given: no NUL, no lone surrogates.
clean_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def assert_one_line(exc: InvalidInput) -> None:
    """An InvalidInput must print as exactly one line with exit code 2."""
    assert exc.exit_code == 2
    assert exc.message and "\n" not in exc.message and "\r" not in exc.message


def assert_storable(job: NewJob) -> None:
    """What the database's constraints and encoding require of every validated job."""
    assert DB_QUEUE.fullmatch(job.queue) and DB_TASK.fullmatch(job.task)
    assert -1000 <= job.priority <= 1000 and 1 <= job.max_attempts <= 1000
    assert 0 < job.timeout_s <= 7 * 86400
    assert job.key is None or (1 <= len(job.key) <= 255 and "\x00" not in job.key)
    (job.key or "").encode()  # PostgreSQL takes UTF-8 only; a lone surrogate would fail at send time
    payload = json.loads(job.payload_json)
    assert isinstance(payload, dict)
    assert len(job.payload_json.encode()) <= MAX_BYTES
    assert json.loads(job.payload_json) == payload
    if job.delay_s is not None:
        assert math.isfinite(job.delay_s) and 0 <= job.delay_s <= 366 * 86400


@settings(max_examples=800, deadline=None)
@given(
    task=st.one_of(st.none(), names),
    queue=names,
    priority=st.integers(min_value=-2000, max_value=2000),
    max_attempts=st.integers(min_value=-5, max_value=1005),
    timeout_s=st.floats(allow_nan=True, allow_infinity=True),
    key=keys,
    delay=st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["30s", "1h30m", "367d", "9" * 400])),
    at=st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["2030-01-01T00:00:00+00:00", "2030-01-01"])),
    after=st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=3),
)
def test_build_job_yields_a_storable_job_or_one_line_refusal(
    task: str | None,
    queue: str,
    priority: int,
    max_attempts: int,
    timeout_s: float,
    key: str | None,
    delay: str | None,
    at: str | None,
    after: list[int],
) -> None:
    defaults = JobDefaults(
        task=task, queue=queue, priority=priority, max_attempts=max_attempts, timeout_s=timeout_s, key=key
    )
    try:
        job = build_job({"after": after, "delay": delay, "run_at": at}, defaults, COMMAND_LINE)
    except InvalidInput as exc:
        assert_one_line(exc)
        return
    assert_storable(job)
    assert all(0 < job_id < 2**63 for job_id in job.after)


@settings(max_examples=800, deadline=None)
@given(json_values)
@example({"a": "\ud800"})
@example({"a": "\\u0000"})
@example({"a": "\x00"})
@example({"n": float("inf")})
def test_encode_payload_yields_storable_json_or_refuses(value: object) -> None:
    try:
        text = encode_payload(value, MAX_BYTES)
    except InvalidInput as exc:
        assert_one_line(exc)
        return
    assert isinstance(value, dict)
    text.encode()
    assert json.loads(text) == value
    assert not any("\x00" in s for s in _strings(json.loads(text)))
    assert len(text.encode()) <= MAX_BYTES


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.text(max_size=60), json_values.map(json.dumps), st.just('{"n": ' + "1" * 5000 + "}")))
@example('{"a": "\\ud800"}')
@example('{"a": NaN}')
@example("[" * 5000 + "]" * 5000)
@example('{"a": 1e999}')
def test_parse_payload_round_trips_or_refuses(text: str) -> None:
    try:
        value = parse_payload(text, MAX_BYTES)
    except InvalidInput as exc:
        assert_one_line(exc)
        return
    assert isinstance(value, dict)
    assert json.loads(encode_payload(value, MAX_BYTES)) == value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=40), json_values.map(json.dumps)))
def test_payload_argument_is_json_or_a_clean_refusal(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relative names resolve inside an empty folder, so no generated text names a real file.
    monkeypatch.chdir(tmp_path)
    assume(text != "-" and not text.startswith("/"))
    try:
        payload_json = read_payload_argument(text, MAX_BYTES)
    except InvalidInput as exc:
        assert_one_line(exc)
        return
    assert isinstance(json.loads(payload_json), dict)
    payload_json.encode()


# --- --jsonl -------------------------------------------------------------------------------------------------

valid_records = st.fixed_dictionaries(
    {"task": st.from_regex(DB_TASK, fullmatch=True)},
    optional={
        "payload": st.dictionaries(clean_text, st.integers() | clean_text, max_size=3),
        "queue": st.from_regex(DB_QUEUE, fullmatch=True),
        "priority": st.integers(min_value=-1000, max_value=1000),
        "key": clean_text.filter(bool),
        "delay": st.sampled_from(["30s", "5m", 10, 0.5, "1h30m"]),
        "max_attempts": st.integers(min_value=1, max_value=1000),
        "timeout": st.sampled_from(["30s", 60, "7d"]),
    },
)
bad_records = st.one_of(
    st.sampled_from(
        [
            '{"task": "t", "priority": 1001}',
            '{"task": "bad name"}',
            '{"task": "t", "queue": "x\'; DROP TABLE sched_jobs; --"}',
            '{"task": "t", "payload": []}',
            '{"task": "t", "payload": {"a": "\\u0000"}}',
            '{"task": "t", "payload": {"a": "\\ud800"}}',
            '{"task": "t", "key": "\\udc80"}',
            '{"task": "t", "key": ""}',
            '{"task": "t", "delay": -1}',
            '{"task": "t", "delay": "forever"}',
            '{"task": "t", "delay": "5s", "run_at": "2030-01-01T00:00:00Z"}',
            '{"task": "t", "run_at": "tomorrow"}',
            '{"task": "t", "timeout": 0}',
            '{"task": "t", "max_attempts": true}',
            '{"task": "t", "delay": ' + "9" * 5000 + "}",
            '{"task": "t", "payload": {"a": NaN}}',
            '{"task": "t", "colour": "red"}',
            '{"task": "t"',
            "[1, 2]",
            '"just a string"',
            "null",
            "{}",
        ]
    ),
    st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and not s.strip().startswith("{")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_records, min_size=1, max_size=30), st.data())
def test_one_bad_line_anywhere_is_named(records: list[dict], data: st.DataObject) -> None:
    lines = [json.dumps(r) + "\n" for r in records]
    position = data.draw(st.integers(min_value=0, max_value=len(lines)), label="position")
    bad = data.draw(bad_records, label="bad line")
    lines.insert(position, bad + "\n")
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl(lines, JobDefaults(max_payload_bytes=MAX_BYTES)))
    assert_one_line(info.value)
    assert info.value.message.startswith(f"line {position + 1}: ")


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_records, max_size=30), st.lists(st.sampled_from(["", " ", "\t"]), max_size=3))
def test_valid_lines_all_become_storable_jobs(records: list[dict], blanks: list[str]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records] + [b + "\n" for b in blanks]
    jobs = list(jobs_from_jsonl(lines, JobDefaults(queue="q1", max_payload_bytes=MAX_BYTES)))
    assert len(jobs) == len(records)
    for record, job in zip(records, jobs, strict=True):
        assert_storable(job)
        assert job.task == record["task"]
        assert job.queue == record.get("queue", "q1")
        assert json.loads(job.payload_json) == record.get("payload", {})
        assert job.key == record.get("key")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=40), json_values.map(json.dumps), valid_records.map(json.dumps)), max_size=4)
)
def test_arbitrary_lines_give_jobs_or_a_numbered_refusal(lines: list[str]) -> None:
    try:
        jobs = list(jobs_from_jsonl(lines, JobDefaults(task="fallback", max_payload_bytes=MAX_BYTES)))
    except InvalidInput as exc:
        assert_one_line(exc)
        number = int(re.match(r"line (\d+): ", exc.message).group(1))
        assert 1 <= number <= len(lines) and lines[number - 1].strip()
        return
    for job in jobs:
        assert_storable(job)


@settings(max_examples=600, deadline=None)
@given(names)
def test_name_checks_agree_with_the_database(name: str) -> None:
    for check, pattern in ((check_queue, DB_QUEUE), (check_task, DB_TASK)):
        try:
            assert check(name) == name
        except InvalidInput as exc:
            assert_one_line(exc)
            assert not pattern.fullmatch(name)
        else:
            assert pattern.fullmatch(name)


@settings(max_examples=600, deadline=None)
@given(keys)
def test_key_check(key: str | None) -> None:
    try:
        assert check_key(key) == key
    except InvalidInput as exc:
        assert_one_line(exc)
        assert key is not None
