"""Per-request values that travel with the running thread: id and absolute deadline."""

from __future__ import annotations

import time
from contextvars import ContextVar

import grpc

current_request_id: ContextVar[str] = ContextVar("remoe_request_id", default="")
current_deadline: ContextVar[float | None] = ContextVar("remoe_deadline", default=None)  # time.time() seconds

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_from_int(value: int) -> grpc.StatusCode:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


def remaining(default: float | None = None) -> float | None:
    """Seconds left before the current request's deadline (never negative); `default` when it has none."""
    deadline = current_deadline.get()
    if deadline is None:
        return default
    return max(0.0, deadline - time.time())


NO_DEADLINE_S = 1e8  # ~3 years: what grpc's time_remaining() reports beyond this means the client set none


def call_time_remaining(context) -> float | None:
    """Seconds left of a call a server handles, None when its client set no deadline (grpc then reports a
    remaining time so large that timers built from it overflow)."""
    left = context.time_remaining()
    return None if left is None or left > NO_DEADLINE_S else left
