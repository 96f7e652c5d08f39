"""The bearer-token check, one for the gRPC API and the HTTP API: `authorization: Bearer <token>` (the scheme's
case does not matter, RFC 6750), compared in constant time."""

from __future__ import annotations

import hmac


def bearer_problem(header: str, token: str) -> str | None:
    """Why an authorization header does not carry `token` ("missing bearer token", "wrong bearer token"), or None
    when it does."""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "missing bearer token"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong bearer token"
    return None
