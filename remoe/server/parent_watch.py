"""Processes that must not outlive the one that started them (a function its backbone, a service `remoe up`)."""

from __future__ import annotations

import os
import signal
import threading
import time


def exit_with_parent(parent_pid: int, period_s: float = 1.0, graceful: bool = False, grace_s: float = 15.0) -> None:
    """Poll the parent (PR_SET_PDEATHSIG would fire with the spawning thread rather than the process); once it is
    gone, exit at once, or with `graceful` SIGTERM this process (its own clean shutdown) and exit after `grace_s`
    if that did not end it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        if graceful:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace_s)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
