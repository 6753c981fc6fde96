"""With no SCHED_DATABASE_URL, sched starts an embedded PostgreSQL, shares it, and stops it after the last user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded


def _postgres_processes(data_dir: Path) -> list[int]:
    """Pids of processes whose command line names ``data_dir``."""
    found = []
    needle = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"postgres" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A temporary folder the server's own user can reach (as root, the server drops to another user)."""
    folder = Path(tempfile.mkdtemp(prefix="sched-embedded-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_embedded_server_lifecycle(work_dir: Path) -> None:
    tmp_path = work_dir
    data_dir = (tmp_path / "data").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env["SCHED_DATA_DIR"] = str(data_dir)

    def sched(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgsched", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            cwd=tmp_path,
        )

    migrated = sched("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[0] == "0001_jobs"
    added = sched("add", "sched.noop")
    assert added.returncode == 0, added.stderr
    job_id = int(added.stdout)
    status = sched("status", "--json")
    assert status.returncode == 0, status.stderr
    (queue,) = json.loads(status.stdout)["queues"]
    assert (queue["queue"], queue["queued"]) == ("default", 1)
    assert json.loads(sched("status", str(job_id), "--json").stdout)["task"] == "sched.noop"
    assert (data_dir / "PG_VERSION").exists(), "the server did not use SCHED_DATA_DIR"

    # Each sched process above was the last user when it exited, so the server must be gone.
    # Process teardown is asynchronous in the kernel; allow a moment for the pids to disappear.
    deadline = time.monotonic() + 15
    while _postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _postgres_processes(data_dir) == []
    assert not (data_dir / "postmaster.pid").exists()
