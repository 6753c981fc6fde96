"""`sched ui`: it serves the dashboard, and it refuses to listen beyond loopback without an access token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from pgsched.web import check_binding, is_loopback


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_binding(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "sched.example.com"])
def test_anything_else_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    check_binding(host, "t0ken")


def test_binding_beyond_loopback_without_a_token_is_refused_in_one_line(sched) -> None:
    done = sched("ui", "--host", "0.0.0.0", env={"SCHED_UI_TOKEN": ""})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "Error: serving on 0.0.0.0 needs an access token (--token or SCHED_UI_TOKEN); only loopback goes without one\n"
    )


def test_sched_ui_serves_the_dashboard(dsn: str) -> None:
    port = free_port()
    env = {**os.environ, "SCHED_DATABASE_URL": dsn, "SCHED_UI_TOKEN": "t0ken-for-test"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "ui", "--port", str(port), "--read-only"],
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                page = httpx.get(url + "/", headers={"authorization": "Bearer t0ken-for-test"})
                break
            except httpx.ConnectError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "sched ui did not start listening"
                time.sleep(0.2)
        assert page.status_code == 200 and "read-only" in page.text
        # The token set in the environment applies on loopback too.
        assert httpx.get(url + "/").status_code == 401
    finally:
        server.terminate()
        _, err = server.communicate(timeout=10)
    assert f"sched ui on http://127.0.0.1:{port}/ (read-only)" in err
