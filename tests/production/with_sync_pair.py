"""Run a command against a private primary with a synchronous standby, both with fsync on, as the failover test
makes them: ``python tests/production/with_sync_pair.py sched bench --jobs 5000``. The command gets the
primary's admin URL in SCHED_DATABASE_URL; both servers are removed afterwards. For measuring what waiting
for the standby costs (SCHED_WORKER_COMMIT), where the failover test measures what it buys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The tests folder, for its support package (pytest puts it on the path; a script run alone does not).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.private_server import SYSTEM_BINARIES, SYSTEM_USER, PrivateServer


def main(command: list[str]) -> int:
    settings = {"fsync": "on", "synchronous_commit": "on", "synchronous_standby_names": "'standby'"}
    primary = PrivateServer(binaries=SYSTEM_BINARIES, run_as=SYSTEM_USER, settings=settings)
    try:
        primary.start()
        primary.standby("standby", settings={"synchronous_standby_names": "''"})
        if command[:1] == ["sched"]:
            command = [sys.executable, "-m", "pgsched", *command[1:]]
        return subprocess.run(command, env={**os.environ, "SCHED_DATABASE_URL": primary.dsn()}).returncode
    finally:
        primary.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
