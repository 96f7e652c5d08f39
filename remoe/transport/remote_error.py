"""The error a destination's failure to compute a batch becomes, whichever transport carried it."""

from __future__ import annotations

import grpc

from remoe.errors import RemoeError


class RemoteExpertError(RemoeError):
    """A destination could not compute a batch; carries the gRPC status to pass on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
