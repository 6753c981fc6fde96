"""Every named query parses and type-checks against the migrated schema."""

from __future__ import annotations

import re

from pgsched import db
from pgsched.errors import SchedError
from pgsched.sqlfiles import queries, query


def _positional(text: str) -> str:
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    # %(name)s is a text parameter and %(name)b a binary one; both become $n.
    return re.sub(r"%\((\w+)\)[sb]", number, text)


def test_every_query_prepares(conn: db.Connection) -> None:
    problems: dict[str, str] = {}
    checked = 0
    conn.run(query("BenchCommitTableCreate"))  # the scratch table bench makes in its own database
    for name, text in sorted(queries().items()):
        # COPY, CREATE, DROP, SET and VACUUM cannot be prepared; the tests of their callers run them instead.
        if text.split()[0].upper() in ("COPY", "CREATE", "DROP", "SET", "VACUUM"):
            continue
        if text.split()[0].upper() == "EXPLAIN":
            # EXPLAIN cannot be prepared: the statement it explains is checked.
            text = re.sub(r"^\s*EXPLAIN\s*\([^)]*\)", "", text, count=1)
        positional = _positional(text)
        assert "%(" not in positional, name
        try:
            with conn.transaction():
                conn.run(query("JobIncomingCreate"))
                conn.run(f"PREPARE sched_check AS {positional}")
                conn.run("DEALLOCATE sched_check")
                checked += 1
        except SchedError as exc:
            problems[name] = exc.message
    assert not problems
    assert checked >= 20
