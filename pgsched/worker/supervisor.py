"""``sched worker --processes N``: run N worker processes, restart the ones that crash, forward signals,
and exit 0 once the whole group has drained after SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

from loguru import logger


def supervise(n: int, child_args: Callable[[int], list[str]]) -> int:
    """Run ``n`` children (``python -m pgsched`` with ``child_args(i)``) until they finish or a signal ends them."""
    stopping = {"count": 0}
    children: dict[int, subprocess.Popen] = {}
    restarts: dict[int, tuple[int, float]] = {}
    exit_codes: dict[int, int] = {}

    def start(i: int) -> None:
        # A process group of its own: a signal sent to the supervisor's whole group (Ctrl-C in a terminal,
        # `kill -TERM -PGID`) reaches the child once, forwarded, rather than twice, which it would take for a
        # second signal and release its running jobs at once (docs/protocol.md, "Shutdown").
        children[i] = subprocess.Popen([sys.executable, "-m", "pgsched", *child_args(i)], process_group=0)
        logger.info("worker process {} started (pid {})", i, children[i].pid)

    def forward(sig: int, _frame: object) -> None:
        stopping["count"] += 1
        logger.info("supervisor: forwarding {} to {} worker(s)", signal.Signals(sig).name, len(children))
        for child in children.values():
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # A terminal that closes hangs up its foreground group only, which no longer holds the children.
    signal.signal(signal.SIGHUP, forward)
    for i in range(n):
        start(i)
    pending_restart: dict[int, float] = {}
    while children or pending_restart:
        time.sleep(0.2)
        now = time.monotonic()
        for i, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[i]
            exit_codes[i] = code
            if stopping["count"] or code == 0:
                continue
            # A crash: restart, backing off when the same slot keeps crashing.
            count, last = restarts.get(i, (0, 0.0))
            count = count + 1 if now - last < 30 else 1
            restarts[i] = (count, now)
            delay = min(30.0, 0.5 * 2 ** (count - 1))
            logger.warning("worker process {} exited with {}; restarting in {:.1f}s", i, code, delay)
            pending_restart[i] = now + delay
        for i, due in list(pending_restart.items()):
            if stopping["count"]:
                del pending_restart[i]
            elif now >= due:
                del pending_restart[i]
                start(i)
    if stopping["count"]:
        return 0
    return 0 if all(code == 0 for code in exit_codes.values()) else 1
