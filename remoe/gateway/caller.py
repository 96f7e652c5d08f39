"""What the gateway needs to know of whoever sent a request: how long it will wait, and when it has left."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Caller(Protocol):
    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline (None: no deadline)."""

    def add_callback(self, callback: Callable[[], object]) -> bool:
        """Run `callback` when the caller leaves; False (not registered) when it has already left."""

    def is_active(self) -> bool:
        """False once the caller has left."""


class LocalCaller:
    """A caller in this process (the HTTP API, tests): `cancel()` is the caller leaving; the callbacks the
    gateway registered (cancelling its backbone call) run, and `is_active()` turns False. A grpc.ServicerContext
    is a Caller as it is."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self._callbacks: list[Callable[[], object]] = []
        self._active = True
        self._lock = threading.Lock()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], object]) -> bool:
        with self._lock:
            if self._active:
                self._callbacks.append(callback)
                return True
        return False

    def is_active(self) -> bool:
        return self._active

    def cancel(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
