"""OpenAI's error shape, and the HTTP status of each gRPC status the gateway can end a request with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc

from remoe.gateway.refused import Refused

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass
class APIError(Exception):
    """An error answer: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return ERROR_TYPE.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_refused(refused: Refused) -> APIError:
    """The HTTP answer to a refused gateway request; a refusal at the limit carries Retry-After."""
    status = HTTP_STATUS.get(refused.code, 500)
    headers = {}
    retry_ms = str(refused.retry_after_ms) if refused.retry_after_ms is not None else None
    if retry_ms is not None:
        # retry-after-ms is what the openai client reads first; Retry-After (whole seconds) is the standard one.
        headers = {"retry-after-ms": retry_ms, "retry-after": str(max(1, math.ceil(int(retry_ms) / 1e3)))}
    return APIError(status, refused.message, code=refused.code.name.lower(), headers=headers)
