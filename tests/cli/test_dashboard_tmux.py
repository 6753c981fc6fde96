"""``sched status --watch`` in a real 80x24 terminal: it draws the queues and exits 0 on Ctrl-C."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

# bash, not sh: on Ctrl-C it waits for the dashboard and carries on when that exits normally, where dash
# would die of the same SIGINT before it could record the exit status.
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or shutil.which("bash") is None, reason="needs tmux")


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


def _wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_watch_in_tmux_draws_and_exits_cleanly_on_ctrl_c(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("INSERT INTO sched_jobs (queue, task) VALUES ('tmuxqueue', 'sched.noop')")
    session = f"sched-watch-{uuid.uuid4().hex[:8]}"
    exit_file = tmp_path / "exit"
    command = (
        f"SCHED_DATABASE_URL={shlex.quote(dsn)} {shlex.quote(sys.executable)} -m pgsched status --watch "
        f"--interval 0.5s; echo $? > {shlex.quote(str(exit_file))}"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", "bash", "-c", command],
        check=True,
        timeout=10,
    )
    try:
        assert _wait_for(lambda: "tmuxqueue" in _tmux("capture-pane", "-p", "-t", session)), _tmux(
            "capture-pane", "-p", "-t", session
        )
        screen = _tmux("capture-pane", "-p", "-t", session).splitlines()
        assert all(len(line) <= 80 for line in screen)
        assert any(line.startswith("queue") and "ready" in line for line in screen)
        _tmux("send-keys", "-t", session, "C-c")
        assert _wait_for(exit_file.exists), "the dashboard did not exit on Ctrl-C"
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)


def test_watch_exits_0_on_sigterm(dsn: str) -> None:
    import os
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "status", "--watch", "--interval", "0.2s"],
        env={**os.environ, "SCHED_DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The dashboard connects only after it took over SIGTERM; its session showing up means it is watching.
    with psycopg.connect(dsn, autocommit=True) as raw:

        def connected() -> bool:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            row = raw.execute(sql).fetchone()
            return bool(row and row[0])

        assert _wait_for(connected), "the dashboard never connected"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
