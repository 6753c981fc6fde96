"""Passwords never leave sched in any text it prints or logs."""

import pytest

from pgsched import db


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:s3cretpw@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x"),
        (
            "postgres://user:p%40ss@db.example.com/app?sslmode=require",
            "postgres://user:***@db.example.com/app?sslmode=require",
        ),
        ("see postgresql://:only@host/db now", "see postgresql://:***@host/db now"),
        ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db PASSWORD = hunter2", "host=db PASSWORD = ***"),
        ("password='with space' host=db", "password=*** host=db"),
        ("password='it\\'s' host=db", "password=*** host=db"),
    ],
)
def test_redacts_passwords(text: str, expected: str) -> None:
    assert db.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u@127.0.0.1:5432/x",
        "postgresql://127.0.0.1:5432/x",
        "host=db user=u dbname=x",
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
    ],
)
def test_leaves_text_without_passwords_alone(text: str) -> None:
    assert db.redact(text) == text


def test_remembered_passwords_are_redacted_anywhere() -> None:
    db.remember_secret("postgresql://u:Zq9-remembered@127.0.0.1/x")
    assert db.redact("server said: bad thing near 'Zq9-remembered'") == "server said: bad thing near '***'"


def test_remember_secret_ignores_malformed_dsns() -> None:
    db.remember_secret("not a dsn ===")
    assert db.redact("not a dsn ===") == "not a dsn ==="
