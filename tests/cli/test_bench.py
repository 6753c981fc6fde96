"""``sched bench``: every figure measured in a database of its own, which is gone afterwards."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from pgsched.bench import TARGETS


def _bench_databases(server_dsn: str) -> set[str]:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sched_bench_%'").fetchall()
    return {name for (name,) in rows}


def test_bench_reports_every_figure_and_drops_its_database(sched, server_dsn: str) -> None:
    # Other runs on a shared server may leave theirs behind: only this run's database must be gone.
    before = _bench_databases(server_dsn)
    result = sched("bench", "--jobs", "300", "--concurrency", "50", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["machine"]["cores"] == os.cpu_count()
    assert figures["machine"]["postgres"][:2].isdigit()
    results = figures["results"]
    for key in TARGETS:
        assert results[key] > 0, key
    for key in ("copy_baseline_per_s", "jsonl_cli_enqueue_per_s", "sql_baseline_per_s", "commit_baseline_per_s"):
        assert results[key] > 0, key
    # The drain ran every job queued for it, and the I/O-bound run is measured against 50 slots of 20 ms.
    assert results["drain_jobs"] == 600
    assert results["io_ideal_per_s"] == 2500
    assert results["io_free_slots_only_efficiency_pct"] > 0
    assert "median of 3" in result.stderr
    assert _bench_databases(server_dsn) <= before


LIMITED = ["--groups", "4", "--max-running", "50", "--group-concurrency", "5", "--group-rate", "60/s"]


@pytest.mark.parametrize("args", [[], ["--groups", "4"], LIMITED], ids=["plain", "fair", "flow control"])
def test_vacuum_blocked_bench_reports_both_databases_per_round_and_drops_them(
    sched, server_dsn: str, args: list[str]
) -> None:
    before = _bench_databases(server_dsn)
    result = sched("bench", "--vacuum-blocked", "--rounds", "2", "--jobs", "400", *args, "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["config"]["groups"] == (4 if args else 0)
    if args == LIMITED:
        assert (
            figures["config"] | {"max_running": 50, "group_concurrency": 5, "group_rate": "60/s"} == figures["config"]
        )
        # The limits were set in both databases: each group's 100 jobs start within its burst of 60 and then at 60
        # a second, so the last starts no sooner than 40/60 s after the first: at most 600 jobs/s, whatever the
        # machine (a drain without them takes a fraction of that).
        for row in figures["rounds"]:
            assert row["vacuumed_per_s"] <= 610 and row["held_per_s"] <= 610, row
    assert [row["jobs_before"] for row in figures["rounds"]] == [0, 400]
    for row in figures["rounds"]:
        assert row["vacuumed_per_s"] > 0 and row["held_per_s"] > 0
    # Dead row versions come from the server's statistics, which reach it within a second or so.
    assert all(row["held_dead_tuples"] >= 0 for row in figures["rounds"])
    for mode in ("vacuumed", "held"):
        assert figures["latency_ms"][mode]["p50"] > 0
    assert len(figures["after_vacuum"]) == 2
    assert "dead row versions" in result.stderr
    assert _bench_databases(server_dsn) <= before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--groups", "10"], "--groups is a setting of --vacuum-blocked"),
        (["--max-running", "10"], "--max-running is a setting of --vacuum-blocked"),
        (["--vacuum-blocked", "--group-rate", "5/s"], "--group-concurrency and --group-rate need --groups"),
        (["--vacuum-blocked", "--groups", "3", "--group-rate", "fast"], "--group-rate: invalid rate 'fast'"),
    ],
)
def test_bench_settings_out_of_place_are_refused(sched, server_dsn: str, args: list[str], message: str) -> None:
    before = _bench_databases(server_dsn)
    result = sched("bench", *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert _bench_databases(server_dsn) == before
