"""Calls the gateway starts and does not wait for (warm-ups, the predictor's Record): held until done, since a
dropped gRPC future may be cancelled, and logged if they fail."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class BackgroundCalls:
    def __init__(self) -> None:
        self._pending: set = set()
        self._lock = threading.Lock()

    def hold(self, future) -> None:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None:
            log.warning("background call failed: %s", future.exception())

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
