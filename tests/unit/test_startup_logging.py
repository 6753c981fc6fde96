"""sched stays quiet as a library without ``import pgsched`` paying for loguru."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pgsched

PACKAGE = Path(pgsched.__file__).parent


def test_only_the_worker_package_and_the_log_setup_import_loguru() -> None:
    # pgsched.worker disables sched's logger on import; a module logging from elsewhere would be loud.
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "loguru" in path.read_text() and path.parent.name != "worker" and path.name not in ("logs.py", "__init__.py")
    ]
    assert offenders == [], f"{offenders} import loguru outside pgsched.worker: move the disable or the logging"


def test_worker_modules_do_not_log_unless_enabled() -> None:
    probe = (
        "import sys\n"
        "import pgsched.worker.engine\n"
        "from loguru import logger\n"
        "logger.remove(); logger.add(sys.stderr, format='{message}')\n"
        "exec('logger.warning(\"library-log\")', {'__name__': 'pgsched.worker.engine', 'logger': logger})\n"
        "import pgsched.logs as logs\n"
        "logger.enable('pgsched')\n"
        "exec('logger.warning(\"enabled-log\")', {'__name__': 'pgsched.worker.engine', 'logger': logger})\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "library-log" not in done.stderr
    assert "enabled-log" in done.stderr


def test_import_pgsched_does_not_import_loguru() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, pgsched; print('loguru' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False"


def test_cli_log_setup_survives_a_later_import_of_the_worker() -> None:
    probe = (
        "from pgsched.logs import configure\n"
        "configure()\n"
        "import pgsched.worker.engine\n"
        "from loguru import logger\n"
        "exec('logger.warning(\"after-configure\")', {'__name__': 'pgsched.worker.engine', 'logger': logger})\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "after-configure" in done.stderr
