"""The named-query loader and the query files it reads."""

import re
from pathlib import Path

import pytest

from pgsched import migrate, sqlfiles
from pgsched.sqlfiles import queries, query

ROOT = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def test_every_query_name_is_unique_sorted_and_in_its_entitys_file() -> None:
    files = {path.stem: HEADER.findall(path.read_text()) for path in sqlfiles.query_files()}
    assert set(files) == {
        "admin",
        "bench",
        "browse",
        "bulk",
        "history",
        "jobs",
        "queues",
        "reads",
        "schedules",
        "workers",
    }
    names = [name for found in files.values() for name in found]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(queries())
    prefixes = {"jobs": ("Job",), "queues": ("Queue",), "schedules": ("Schedule",), "workers": ("Worker",)}
    prefixes["reads"] = ("Dashboard", "Database", "Demo", "Doctor")
    prefixes["bench"] = ("Bench",)
    prefixes["browse"] = ("Browse",)
    prefixes["bulk"] = ("Bulk",)
    for stem, found in files.items():
        assert found, f"{stem}.sql declares no queries"
        assert found == sorted(found), f"{stem}.sql is not sorted by name"
        if stem in prefixes:
            assert all(name.startswith(prefixes[stem]) for name in found), stem


def test_every_query_is_a_single_clean_statement() -> None:
    for name, text in queries().items():
        assert re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+", name), name
        assert text, name
        assert "-- name:" not in text, name
        assert not text.endswith(";"), name
        # One statement per name: a stray semicolon means two queries ran together.
        assert ";" not in text, name
        assert text.split()[0].upper() in {
            "SELECT",
            "WITH",
            "INSERT",
            "UPDATE",
            "DELETE",
            "COPY",
            "CREATE",
            "DROP",
            "SET",
            "VACUUM",
            "EXPLAIN",
        }, name


def test_every_query_has_a_description() -> None:
    for path in sqlfiles.query_files():
        text = path.read_text()
        for match in HEADER.finditer(text):
            following = text[match.end() :].lstrip("\n").splitlines()[0]
            assert following.startswith("-- "), f"{match.group(1)} has no description line"


def test_every_query_the_code_names_exists() -> None:
    used: set[str] = set()
    for path in (ROOT / "pgsched").rglob("*.py"):
        used.update(re.findall(r"query\(\"(\w+)\"\)", path.read_text()))
    assert used, "no query(...) call sites found"
    missing = sorted(used - set(queries()))
    assert not missing


def test_unknown_query_name_raises() -> None:
    with pytest.raises(KeyError):
        query("JobDoesNotExist")


def test_duplicate_names_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "a.sql").write_text("-- name: JobOne\n-- first\nSELECT 1;\n")
    (tmp_path / "queries" / "b.sql").write_text("-- name: JobOne\n-- again\nSELECT 2;\n")
    monkeypatch.setattr(sqlfiles, "sql_dir", lambda: tmp_path)
    sqlfiles.queries.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"query JobOne is defined twice \(again in b\.sql\)"):
            sqlfiles.queries()
    finally:
        sqlfiles.queries.cache_clear()


def test_loader_strips_descriptions_and_semicolons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "jobs.sql").write_text(
        "-- header\n\n-- name: JobA\n-- what A does\nSELECT 1\n  -- why\nFROM t;\n\n-- name: JobB\n-- B\nSELECT 2;\n"
    )
    monkeypatch.setattr(sqlfiles, "sql_dir", lambda: tmp_path)
    sqlfiles.queries.cache_clear()
    try:
        assert sqlfiles.queries() == {"JobA": "SELECT 1\nFROM t", "JobB": "SELECT 2"}
    finally:
        sqlfiles.queries.cache_clear()


def test_migration_files_are_numbered_and_found() -> None:
    found = migrate.available()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "jobs"
    assert all(m.sql.strip() for m in found)
