"""Running the real ``sched`` CLI from a test, in a subprocess, against any database URL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping


def run_sched(
    url: str,
    *args: str,
    schema: str | None = None,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``sched ARGS`` with SCHED_DATABASE_URL=url (and SCHED_SCHEMA=schema), plus ``env``; run from the temp
    folder, so no .env file of the checkout is read."""
    full_env = {**os.environ, "SCHED_DATABASE_URL": url, **({"SCHED_SCHEMA": schema} if schema else {}), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )
