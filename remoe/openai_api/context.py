"""A stand-in for grpc.ServicerContext, so the HTTP API calls the gateway's Generate in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NoReturn

import grpc


class GatewayAbort(Exception):
    """Generate ended the call with a status (what a gRPC client would get as an RpcError)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: dict[str, str]) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing = trailing


class InProcessContext:
    """The part of grpc.ServicerContext that GatewayServicer.Generate uses. `cancel()` is the client leaving:
    the callbacks Generate registered (cancelling its backbone call) run, and `is_active()` turns False."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self._callbacks: list[Callable[[], object]] = []
        self._active = True
        self._code: grpc.StatusCode | None = None
        self._trailing: dict[str, str] = {}
        self._lock = threading.Lock()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self._code = code
        raise GatewayAbort(code, details, dict(self._trailing))

    def code(self) -> grpc.StatusCode | None:
        return self._code

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

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing.update({str(k): str(v) for k, v in metadata})

    def cancel(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
