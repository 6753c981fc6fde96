"""Validation of names, numbers, keys and payloads before anything reaches the database."""

import json
import math

import pytest

from pgsched.errors import InvalidInput
from pgsched.models import (
    check_key,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task,
    check_timeout,
    encode_payload,
    parse_payload,
)


@pytest.mark.parametrize("name", ["default", "q1", "emails.high", "a:b-c_d", "A" * 64, "x"])
def test_accepts_queue_names(name: str) -> None:
    assert check_queue(name) == name


@pytest.mark.parametrize("name", ["", "A" * 65, "has space", "q;drop", "q'", "é", "q\n", "q/1", "q\x00"])
def test_rejects_queue_names(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_queue(name)
    assert info.value.message == f"invalid queue name {name!r}: use 1-64 letters, digits or _ . : -"


def test_rejects_non_string_queue() -> None:
    with pytest.raises(InvalidInput):
        check_queue(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["sched.noop", "send_report", "a:b-c", "t" * 128])
def test_accepts_task_names(name: str) -> None:
    assert check_task(name) == name


@pytest.mark.parametrize("name", ["", "t" * 129, "two words", "x);--", "ñ"])
def test_rejects_task_names(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_task(name)
    assert info.value.message == f"invalid task name {name!r}: use 1-128 letters, digits or _ . : -"


@pytest.mark.parametrize("value", [-1000, 0, 1000])
def test_accepts_priorities(value: int) -> None:
    assert check_priority(value) == value


@pytest.mark.parametrize("value", [-1001, 1001, True, 1.0, "1", None])
def test_rejects_priorities(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_priority(value)
    assert info.value.message == f"invalid priority {value!r}: must be an integer from -1000 to 1000"


@pytest.mark.parametrize("value", [1, 3, 1000])
def test_accepts_max_attempts(value: int) -> None:
    assert check_max_attempts(value) == value


@pytest.mark.parametrize("value", [0, -1, 1001, False, 2.5])
def test_rejects_max_attempts(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_max_attempts(value)
    assert info.value.message == f"invalid max attempts {value!r}: must be an integer from 1 to 1000"


@pytest.mark.parametrize("value", [0.001, 1, 300, 7 * 86400])
def test_accepts_timeouts(value: float) -> None:
    assert check_timeout(value) == float(value)


@pytest.mark.parametrize("value", [0, -1, 7 * 86400 + 1, math.inf, math.nan, "5"])
def test_rejects_timeouts(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_timeout(value)  # type: ignore[arg-type]
    assert info.value.message.startswith(f"invalid timeout {value!r}: must be more than 0 and at most 7d")


@pytest.mark.parametrize("key", [None, "k", "order-42", "'; DROP TABLE sched_jobs; --", "k" * 255, "ключ"])
def test_accepts_keys(key: str | None) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "a\x00b", 5])
def test_rejects_keys(key: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_key(key)
    assert info.value.message == "invalid key: must be 1-255 characters"


def test_encodes_payload_compactly() -> None:
    text = encode_payload({"to": "ana@example.com", "n": [1, 2], "ü": "ß"}, 1024)
    assert text == '{"to":"ana@example.com","n":[1,2],"ü":"ß"}'
    assert json.loads(text) == {"to": "ana@example.com", "n": [1, 2], "ü": "ß"}


@pytest.mark.parametrize(
    ("payload", "kind"),
    [([1, 2], "an array"), ("s", "a string"), (3, "a number"), (2.5, "a number"), (None, "null"), (True, "a boolean")],
)
def test_rejects_non_object_payloads(payload: object, kind: str) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_payload(payload, 1024)
    assert info.value.message == f"payload must be a JSON object, not {kind}"


def test_payload_size_limit_counts_utf8_bytes() -> None:
    payload = {"s": "é" * 10}  # 10 characters, 20 bytes
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    assert encode_payload(payload, size)
    with pytest.raises(InvalidInput) as info:
        encode_payload(payload, size - 1)
    assert info.value.message == (f"payload is {size} bytes, over the limit of {size - 1} (SCHED_MAX_PAYLOAD_BYTES)")


@pytest.mark.parametrize("payload", [{"a": "x\x00y"}, {"a\x00": 1}, {"a": ["\x00"]}, {"a": "\\\x00"}])
def test_rejects_nul_characters(payload: dict) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_payload(payload, 1024)
    assert info.value.message == "payload must not contain NUL characters (\\u0000)"


def test_keeps_escaped_backslash_u0000_text() -> None:
    # The six characters \u0000 written literally are not a NUL; PostgreSQL stores them fine.
    text = encode_payload({"a": "\\u0000"}, 1024)
    assert json.loads(text) == {"a": "\\u0000"}


@pytest.mark.parametrize("payload", [{"x": math.nan}, {"x": math.inf}, {"x": object()}])
def test_rejects_unserializable_payloads(payload: dict) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_payload(payload, 1024)
    assert info.value.message.startswith("payload is not JSON-serializable: ")


def test_parse_payload_accepts_objects() -> None:
    assert parse_payload('{"seconds": 1}', 100) == {"seconds": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "payload is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ('{"a": NaN}', "payload is not valid JSON: NaN is not allowed"),
        ('{"a": Infinity}', "payload is not valid JSON: Infinity is not allowed"),
        ("[1]", "payload must be a JSON object, not an array"),
        ("null", "payload must be a JSON object, not null"),
        ('{"a": "\\u0000"}', "payload must not contain NUL characters (\\u0000)"),
        ("[" * 100_000, "payload is nested too deeply"),
    ],
)
def test_parse_payload_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_payload(text, 1_000_000)
    assert info.value.message == message


def test_parse_payload_refuses_huge_text_before_parsing() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_payload('{"a": "' + "x" * 5000 + '"}', 1000)
    assert info.value.message == "payload is over the limit of 1000 bytes (SCHED_MAX_PAYLOAD_BYTES)"


def test_with_payload_changes_the_payload_only() -> None:
    from dataclasses import fields
    from datetime import UTC, datetime

    from pgsched.models import NewJob

    job = NewJob("t", "{}", "q", 5, datetime(2030, 1, 1, tzinfo=UTC), None, 7, 60.0, "k", [3])
    other = job.with_payload('{"n":1}')
    assert other.payload_json == '{"n":1}' and job.payload_json == "{}"
    names = [f.name for f in fields(NewJob) if f.name != "payload_json"]
    assert [getattr(other, n) for n in names] == [getattr(job, n) for n in names]
