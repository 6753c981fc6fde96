"""Turning --payload arguments and --jsonl lines into validated jobs."""

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgsched.errors import InvalidInput
from pgsched.jobspec import COMMAND_LINE, JobDefaults, build_job, jobs_from_jsonl, parse_at, read_payload_argument


def test_payload_defaults_to_empty_object() -> None:
    assert read_payload_argument(None, 100) == "{}"


def test_inline_payload_is_reencoded_compactly() -> None:
    assert read_payload_argument('{ "seconds" : 1 }', 100) == '{"seconds":1}'


def test_payload_from_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"to": "ana@example.com"}\n')
    assert read_payload_argument(str(path), 100) == '{"to":"ana@example.com"}'


def test_payload_file_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(InvalidInput) as info:
        read_payload_argument(str(path), 100)
    assert info.value.message == "payload must be a JSON object, not an array"


def test_payload_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"a": [1, 2]}'))
    assert read_payload_argument("-", 100) == '{"a":[1,2]}'


def test_missing_file_is_neither_json_nor_file() -> None:
    with pytest.raises(InvalidInput) as info:
        read_payload_argument("no/such/file.json", 100)
    assert info.value.message == "payload 'no/such/file.json' is neither JSON nor a readable file"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "payload is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ('"text"', "payload must be a JSON object, not a string"),
        ("[]", "payload must be a JSON object, not an array"),
        ("42", "payload must be a JSON object, not a number"),
        ("true", "payload must be a JSON object, not a boolean"),
    ],
)
def test_bad_inline_payloads(value: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        read_payload_argument(value, 100)
    assert info.value.message == message


def test_oversize_inline_payload() -> None:
    with pytest.raises(InvalidInput) as info:
        read_payload_argument('{"a": "' + "x" * 20 + '"}', 16)
    assert info.value.message == "payload is 28 bytes, over the limit of 16 (SCHED_MAX_PAYLOAD_BYTES)"


def test_parse_at_keeps_zone_and_localizes_naive_times() -> None:
    assert parse_at("2030-01-31T09:00:00+02:00") == datetime(2030, 1, 31, 7, tzinfo=UTC)
    naive = parse_at("2030-01-31T09:00:00")
    assert naive.tzinfo is not None
    assert naive.replace(tzinfo=None) == datetime(2030, 1, 31, 9)


def test_parse_at_rejects_garbage() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_at("tomorrow")
    assert info.value.message == "invalid time 'tomorrow': use ISO 8601, e.g. 2026-01-31T09:00:00+00:00"


def test_build_job_validates_everything() -> None:
    job = build_job({"after": [3, 1], "delay": "1m30s"}, JobDefaults(task="t", queue="q", priority=5, key="k"))
    assert (job.task, job.queue, job.priority, job.key, job.delay_s, job.after) == ("t", "q", 5, "k", 90.0, [3, 1])


@pytest.mark.parametrize(
    ("defaults", "kwargs", "message"),
    [
        (JobDefaults(task="t"), {"delay": "1s", "run_at": "2030-01-01T00:00:00"}, "use --delay or --at, not both"),
        (JobDefaults(), {}, "missing TASK (or --jsonl FILE)"),
        (JobDefaults(task="t"), {"after": [0]}, "--after 0: no such job"),
        (JobDefaults(task="t"), {"delay": "400d"}, "invalid delay '400d': at most a year"),
        (JobDefaults(task="t", timeout_s=0), {}, "invalid timeout 0: must be more than 0 and at most 7d"),
    ],
)
def test_build_job_errors(defaults: JobDefaults, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_job(kwargs, defaults, COMMAND_LINE)
    assert info.value.message == message


def test_jsonl_lines_override_defaults_and_skip_blank_lines() -> None:
    defaults = JobDefaults(
        task="base", queue="q0", priority=1, payload_json='{"d":1}', timeout_s=60, delay_s=5, max_payload_bytes=1000
    )
    soon = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    lines = [
        '{"payload": {"n": 1}}\n',
        "\n",
        '{"task": "other", "queue": "q1", "priority": -3, "key": "k", "max_attempts": 7, "timeout": "2m"}\n',
        json.dumps({"run_at": soon.isoformat()}) + "\n",
        '{"delay": 30}\n',
    ]
    jobs = list(jobs_from_jsonl(lines, defaults))
    assert len(jobs) == 4
    first, second, third, fourth = jobs
    assert (first.task, first.queue, first.payload_json, first.delay_s, first.timeout_s) == (
        "base",
        "q0",
        '{"n":1}',
        5,
        60,
    )
    assert (second.task, second.queue, second.priority, second.key) == ("other", "q1", -3, "k")
    assert (second.max_attempts, second.timeout_s, second.payload_json) == (7, 120.0, '{"d":1}')
    assert third.run_at == soon and third.delay_s is None
    assert fourth.delay_s == 30.0 and fourth.run_at is None


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
        ("[1, 2]", "each line must be a JSON object"),
        ('{"colour": "red"}', "unknown field 'colour'"),
        ('{"payload": [1]}', "payload must be a JSON object, not an array"),
        ('{"payload": {"a": "\\u0000"}}', "payload must not contain NUL characters (\\u0000)"),
        ('{"queue": "bad queue"}', "invalid queue name 'bad queue': use 1-64 letters, digits or _ . : -"),
        ('{"priority": "high"}', "invalid priority 'high': must be an integer from -1000 to 1000"),
        ('{"priority": 5000}', "invalid priority 5000: must be an integer from -1000 to 1000"),
        ('{"max_attempts": true}', "invalid max attempts True: must be an integer from 1 to 1000"),
        ('{"delay": "soon"}', "invalid delay 'soon': use e.g. 30s, 5m, 2h, 7d, 1h30m or plain seconds"),
        ('{"delay": 1, "run_at": "2030-01-01T00:00:00"}', "use delay or run_at, not both"),
        ('{"run_at": "later"}', "invalid time 'later': use ISO 8601, e.g. 2026-01-31T09:00:00+00:00"),
        ('{"timeout": "0s"}', "invalid timeout 0.0: must be more than 0 and at most 7d"),
        ('{"key": ""}', "invalid key: must be 1-255 characters"),
        ('{"task": null}', "missing task (give it in the line or as TASK)"),
    ],
)
def test_jsonl_errors_name_the_line(bad_line: str, message: str) -> None:
    lines = ['{"payload": {}}', "", bad_line, '{"payload": {}}']
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl(lines, JobDefaults(task="t", max_payload_bytes=1000)))
    assert info.value.message == f"line 3: {message}"


def test_jsonl_needs_a_task_somewhere() -> None:
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl(['{"payload": {}}'], JobDefaults(max_payload_bytes=1000)))
    assert info.value.message == "line 1: missing task (give it in the line or as TASK)"


def test_jsonl_oversize_payload() -> None:
    line = json.dumps({"payload": {"a": "x" * 100}})
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl([line], JobDefaults(task="t", max_payload_bytes=50)))
    assert info.value.message == "line 1: payload is 108 bytes, over the limit of 50 (SCHED_MAX_PAYLOAD_BYTES)"


def test_jsonl_delay_is_relative_seconds() -> None:
    (job,) = jobs_from_jsonl(['{"delay": "1h"}'], JobDefaults(task="t", max_payload_bytes=100))
    assert timedelta(seconds=job.delay_s) == timedelta(hours=1)


def test_jsonl_error_at_the_end_of_a_line_names_that_line() -> None:
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl(['{"payload": {}}\n', '{"payload": {"n": 2}\n'], JobDefaults(task="t")))
    assert info.value.message == "line 2: not valid JSON: Expecting ',' delimiter at column 21"


def test_jsonl_checks_command_line_defaults_even_without_lines() -> None:
    with pytest.raises(InvalidInput) as info:
        list(jobs_from_jsonl([], JobDefaults(task="t", timeout_s=0)))
    assert info.value.message == "invalid timeout 0: must be more than 0 and at most 7d"


def test_unterminated_string_message_reads_well() -> None:
    with pytest.raises(InvalidInput) as info:
        read_payload_argument('{"a": "b', 100)
    assert info.value.message == "payload is not valid JSON: Unterminated string starting at line 1 column 7"
