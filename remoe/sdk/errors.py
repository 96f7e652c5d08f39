"""Typed SDK exceptions; each carries the gRPC status code and the server's message."""

from __future__ import annotations

import grpc

from remoe.constants import RETRY_PUSHBACK_KEY
from remoe.errors import RemoeError


class RemoeRpcError(RemoeError):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(RemoeRpcError):
    """The request is malformed or out of range; fix it before retrying."""


class Unavailable(RemoeRpcError):
    """A service could not be reached (after the channel's own retries)."""


class DeadlineExceeded(RemoeRpcError):
    """The call's deadline passed; the work was stopped on every service."""


class ResourceExhausted(RemoeRpcError):
    """The server is at capacity; retry after `retry_after_s` (the server's hint; None when it gave none)."""

    retry_after_s: float | None = None


class Cancelled(RemoeRpcError):
    """The call was cancelled."""


class Unauthenticated(RemoeRpcError):
    """The gateway asks for a bearer token and got none or a wrong one (Client(token=...), $REMOE_TOKEN)."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def from_rpc_error(error: grpc.RpcError) -> RemoeRpcError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    typed = _BY_CODE.get(code, RemoeRpcError)(code, details)
    if isinstance(typed, ResourceExhausted):
        typed.retry_after_s = _retry_after_s(error)
    return typed


def _retry_after_s(error: grpc.RpcError) -> float | None:
    """The gateway's retry hint: gRPC's `grpc-retry-pushback-ms` trailing metadata."""
    try:
        trailing = error.trailing_metadata() or ()
    except (AttributeError, TypeError):
        return None
    for key, value in trailing:
        if key == RETRY_PUSHBACK_KEY and str(value).isdigit():
            return int(value) / 1e3
    return None
