"""Client SDK for a Remoe gateway."""

from remoe.sdk.client import AsyncClient, Chunk, Client, Connection, Result, Usage
from remoe.sdk.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    RemoeRpcError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from remoe.sdk.scores import Score, TokenLogprob

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Chunk",
    "Client",
    "Connection",
    "DeadlineExceeded",
    "InvalidArgument",
    "RemoeRpcError",
    "ResourceExhausted",
    "Result",
    "Score",
    "TokenLogprob",
    "Unauthenticated",
    "Unavailable",
    "Usage",
]
