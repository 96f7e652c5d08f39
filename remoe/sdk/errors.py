"""Typed SDK exceptions; each carries the gRPC status code and the server's message."""

from __future__ import annotations

import grpc

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
    """The server is at capacity; retry later."""


class Cancelled(RemoeRpcError):
    """The call was cancelled."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError) -> RemoeRpcError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, RemoeRpcError)(code, details)
