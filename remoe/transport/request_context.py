"""Per-request values that travel with the running thread: id and absolute deadline, and in a batched forward
the requests behind its rows."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class FunctionBill:
    """What a request's functions bill it, per function: seconds (each batch's handler time as the function
    reports it, the duration a per-invocation platform bills) and invocations (where a platform charges per
    request); beside them the round trips the backbone saw, which also hold the transport and the time the
    answer waited to be read. A batch shared by several requests splits all three."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)
    round_trip_s: dict[str, float] = field(default_factory=dict)

    def add(self, function: str, seconds: float, round_trip_s: float, share: float = 1.0) -> None:
        self.seconds[function] = self.seconds.get(function, 0.0) + seconds * share
        self.calls[function] = self.calls.get(function, 0.0) + share
        self.round_trip_s[function] = self.round_trip_s.get(function, 0.0) + round_trip_s * share


@dataclass(frozen=True, slots=True)
class RequestRows:
    """One request's rows in a forward that carries several requests' tokens (a batched step): rows
    [previous group's stop, stop). What a layer's fan-out needs of that request travels with its rows."""

    stop: int
    request_id: str
    deadline: float | None  # time.time() seconds; None = none
    routing: Any = None  # the request's compiled plan (dispatch.executor.Routing); None = the default placement
    functions: FunctionBill | None = None  # where its functions' bill accumulates
    recorder: Any = None  # its ActivationRecorder, or None


# The requests of the forward running in this thread, in row order; None outside a batched forward.
current_batch: ContextVar[tuple[RequestRows, ...] | None] = ContextVar("remoe_batch", default=None)


def row_starts(batch: tuple[RequestRows, ...]) -> list[int]:
    return [0, *(group.stop for group in batch[:-1])]
