"""The gateway's optional front door: TLS and a bearer token, both configured by environment.

The token guards the GatewayService's methods only: health checks (probes) and reflection stay open, so
orchestrators can check a gateway they hold no token for. Compared in constant time.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from remoe.errors import RemoeError
from remoe.server.bearer import bearer_problem

GATEWAY_METHODS = "/remoe.v1.GatewayService/"


class TLSConfigError(RemoeError):
    """The TLS certificate or key is missing or unreadable."""


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    except OSError as e:
        raise TLSConfigError(f"TLS: cannot read {e.filename}: {e.strerror}") from None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls to the protected methods without `authorization: Bearer <token>` (UNAUTHENTICATED)."""

    def __init__(self, token: str, protected: str = GATEWAY_METHODS) -> None:
        if not token:
            raise ValueError("the bearer token is empty")
        self._token = token
        self._protected = protected

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._protected):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        message = bearer_problem(str(given), self._token)
        if message is None:
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{message} (send 'authorization: Bearer <token>')")

        def deny_stream(request, context):
            deny(request, context)
            yield  # pragma: no cover  (abort raises)

        kind = (
            grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        )
        return kind(
            deny_stream if handler.response_streaming else deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
