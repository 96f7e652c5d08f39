"""The one error a gateway request ends with: a status code and a message naming what is wrong."""

from __future__ import annotations

import grpc


class Refused(Exception):
    """The request is not (or no longer) served. `code` is the gRPC status the client gets (the HTTP API maps it
    to an HTTP status); `retry_after_ms` is set when the gateway was full and says when to come back."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
