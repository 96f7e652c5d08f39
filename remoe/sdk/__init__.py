"""Client SDK for a Remoe gateway."""

from remoe.sdk.client import AsyncClient, Chunk, Client, Result, Usage
from remoe.sdk.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    RemoeRpcError,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Chunk",
    "Client",
    "DeadlineExceeded",
    "InvalidArgument",
    "RemoeRpcError",
    "ResourceExhausted",
    "Result",
    "Unavailable",
    "Usage",
]
