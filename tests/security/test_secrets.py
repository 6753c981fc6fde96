"""The database password never leaves sched: not in errors, tracebacks (--debug), data output, worker logs,
``/healthz`` or ``/metrics``. The health server listens on loopback unless told otherwise, payloads are data, and
the built-in tasks cannot run commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

PASSWORD = "Xy9-SeCrEt-pw"
LOGIN = "sched_pw_test"


@pytest.fixture
def secret_dsn(sched: Callable, server_dsn: str, dsn: str, password_url: Callable) -> str:
    """A URL with a known password for a login that may add, read status and work the test's database."""
    assert sched("migrate", "--roles").returncode == 0
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            f"DO $$ BEGIN CREATE ROLE {LOGIN} LOGIN PASSWORD '{PASSWORD}'; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        admin.execute(f"GRANT sched_producer, sched_worker TO {LOGIN}")
    return password_url(dsn, LOGIN, PASSWORD)


def _run(argv: list[str], url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "SCHED_DATABASE_URL": url},
        cwd=tempfile.gettempdir(),
        timeout=timeout,
    )


def assert_no_password(*texts: str) -> None:
    """The password appears nowhere, in any case, nor percent-encoded."""
    for text in texts:
        assert PASSWORD.lower() not in text.lower(), text
        assert "SeCrEt" not in text, text


def _broken_urls(secret_dsn: str) -> dict[str, str]:
    good = secret_dsn.rsplit("/", 1)[0]
    return {
        "closed port": f"postgresql://{LOGIN}:{PASSWORD}@127.0.0.1:1/x",
        "unknown host": f"postgresql://{LOGIN}:{PASSWORD}@no-such-host.invalid:5432/x",
        "bad dbname": f"{good}/sched_no_such_db",
        "key=value": f"host=127.0.0.1 port=1 user={LOGIN} password={PASSWORD} dbname=x",
        "quoted key=value": f"host=127.0.0.1 port=1 user={LOGIN} password='{PASSWORD}' dbname=x",
        "bad option": f"{secret_dsn}?sslmode=sometimes",
        "bad port": f"postgresql://{LOGIN}:{PASSWORD}@127.0.0.1:notaport/x",
    }


@pytest.mark.parametrize("debug", [False, True])
def test_connection_errors_never_show_the_password(secret_dsn: str, debug: bool) -> None:
    for name, url in _broken_urls(secret_dsn).items():
        for argv in (["status", "--json"], ["add", "t"], ["migrate", "--check"]):
            done = _run(["--debug", *argv] if debug else argv, url)
            assert done.returncode == 1, (name, argv, done.stderr)
            assert done.stdout == ""
            assert_no_password(done.stderr)
            assert done.stderr.splitlines()[-1].startswith("Error: "), done.stderr
            if debug:
                assert "Traceback" in done.stderr, done.stderr


def test_data_output_never_shows_the_password(secret_dsn: str) -> None:
    added = _run(["add", "sched.noop", "--payload", '{"to": "someone"}', "--json"], secret_dsn)
    assert added.returncode == 0, added.stderr
    job_id = json.loads(added.stdout)["id"]
    outputs = [added.stdout, added.stderr]
    for argv in (
        ["add", "sched.noop"],
        ["status", "--json"],
        ["status"],
        ["status", str(job_id), "--json"],
        ["status", str(job_id)],
        ["migrate", "--check", "--json"],
        ["reap", "--json"],
    ):
        done = _run(argv, secret_dsn)
        assert done.returncode == 0, (argv, done.stderr)
        outputs += [done.stdout, done.stderr]
    assert_no_password(*outputs)


def test_debug_tracebacks_never_show_the_password(secret_dsn: str) -> None:
    # Errors raised after connecting, with the DSN in the caller's frames.
    for argv in (["status", "999999"], ["add", "t", "--after", "999999"], ["cleanup", "--older-than", "1s"]):
        done = _run(["--debug", *argv], secret_dsn)
        assert done.returncode in (1, 2), (argv, done.stderr)
        assert "Traceback" in done.stderr
        assert_no_password(done.stdout, done.stderr)


def test_worker_logs_never_show_the_password(secret_dsn: str) -> None:
    for argv in (["add", "sched.noop"], ["add", "sched.fail", "--max-attempts", "1", "--payload", '{"message": "x"}']):
        assert _run(argv, secret_dsn).returncode == 0
    for flags in (["-vv"], ["-v", "--log-json"]):
        done = _run(["worker", "--burst", *flags], secret_dsn, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr, "the worker logged nothing, so this test would show nothing"
        assert_no_password(done.stdout, done.stderr)
    # A worker that cannot reach its database keeps retrying, logging each attempt.
    lost = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "worker", "-vv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SCHED_DATABASE_URL": _broken_urls(secret_dsn)["closed port"]},
        cwd=tempfile.gettempdir(),
    )
    time.sleep(3)
    lost.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = lost.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        lost.kill()
        stdout, stderr = lost.communicate()
    assert "127.0.0.1" in stderr, stderr
    assert_no_password(stdout, stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.fixture
def health_worker(secret_dsn: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """A running worker serving health on a free port of the default host."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "worker", "--health-port", str(port), "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SCHED_DATABASE_URL": secret_dsn},
        cwd=tempfile.gettempdir(),
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening_addresses(port):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the health server never came up"
            time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_health_and_metrics_never_show_the_password(health_worker: tuple[int, subprocess.Popen]) -> None:
    port, proc = health_worker
    # 127.0.0.1 in /proc's little-endian hex; nothing listens on any other address.
    assert _listening_addresses(port) == {"0100007F"}
    bodies = []
    for path in ("/healthz", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            assert response.status == 200
            bodies.append(response.read().decode())
    assert "sched" in bodies[1]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    assert_no_password(*bodies, stdout, stderr)


def test_builtin_tasks_are_only_noop_sleep_and_fail() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from pgsched.worker.registry import registry; print(' '.join(registry.names()))"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sched.fail", "sched.noop", "sched.sleep"]


def test_payloads_are_data_not_commands(secret_dsn: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    shell = f"$(touch {marker}); `touch {marker}`; touch {marker}"
    for argv in (
        ["add", "sched.fail", "--max-attempts", "1", "--payload", json.dumps({"message": shell})],
        ["add", "sched.sleep", "--payload", json.dumps({"seconds": 0, "cmd": shell, "__import__": "os"})],
        ["add", "sched.noop", "--payload", json.dumps({"command": shell, "args": [shell]})],
    ):
        assert _run(argv, secret_dsn).returncode == 0
    done = _run(["worker", "--burst"], secret_dsn, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(_run(["status", "--json"], secret_dsn).stdout)
    assert status["queues"][0]["succeeded"] == 2 and status["queues"][0]["failed"] == 1
    assert not marker.exists()
