"""Remoe: serve Mixture-of-Experts models cheaply.

`from remoe import LocalEngine` runs a whole model in one process. Heavy imports (torch, transformers)
happen on first use, so light modules (the function server, the CLI's --help) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LocalEngine", "GenerationResult", "Client", "AsyncClient"]

if TYPE_CHECKING:
    from remoe.model.engine import GenerationResult, LocalEngine
    from remoe.sdk import AsyncClient, Client

_HOMES = {"LocalEngine": "remoe.model.engine", "GenerationResult": "remoe.model.engine"}


def __getattr__(name: str):
    if name in ("Client", "AsyncClient"):
        from remoe import sdk

        return getattr(sdk, name)
    if name in _HOMES:
        from remoe.model import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'remoe' has no attribute {name!r}")
