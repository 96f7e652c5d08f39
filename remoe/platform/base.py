"""What every function platform offers, and the description of one function."""

from __future__ import annotations

import hashlib
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from remoe.constants import MIN_FUNCTION_MEMORY_MB
from remoe.errors import RemoeError
from remoe.experts.cache import ExpertId

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label: Knative names Services this way


class FunctionStartError(RemoeError):
    """A function instance could not start (its message says why, e.g. too little memory)."""


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One remote-expert function of a plan: its experts, memory size and replica count."""

    name: str
    experts: tuple[ExpertId, ...]
    memory_mb: int
    replicas: int = 1
    concurrency: int = 0  # requests one instance takes at once; 0 = unlimited (Knative's default)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"function name {self.name!r} must be a DNS label (lowercase letters, digits, '-')")
        if not self.experts:
            raise ValueError(f"function {self.name} hosts no experts")
        if self.memory_mb < MIN_FUNCTION_MEMORY_MB:
            raise ValueError(f"function {self.name}: memory_mb {self.memory_mb} is below {MIN_FUNCTION_MEMORY_MB}")
        if self.replicas < 1:
            raise ValueError(f"function {self.name}: replicas must be >= 1")


def content_name(experts: tuple[ExpertId, ...], memory_mb: int) -> str:
    """A function's name from what it hosts: the same experts and memory in another request's plan name the same
    function, so its warm instances are reused. Prefixed by the layer when every expert is in one."""
    layers = {layer for layer, _ in experts}
    prefix = f"l{next(iter(layers))}" if len(layers) == 1 else "f"
    digest = hashlib.sha1(f"{tuple(experts)}{memory_mb}".encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


@dataclass(slots=True)
class InstanceStatus:
    function: str
    replica: int
    state: str  # "cold" (not running), "starting", "warm"
    address: str = ""
    memory_mb: int = 0
    cold_starts: int = 0
    calls: int = 0
    last_error: str = ""
    crashes: int = 0


@dataclass(slots=True)
class ColdStartRecord:
    function: str
    replica: int
    started_at: float  # time.time()
    ready_s: float  # spawn to serving
    reason: str  # "warm-up" or "on demand"
    breakdown: dict[str, float] = field(default_factory=dict)


class FunctionPlatform(Protocol):
    @property
    def keep_alive_s(self) -> float:
        """Idle seconds before a function scales to zero (what a start it was not reused for holds)."""

    def deploy(self, specs: list[FunctionSpec]) -> None:
        """Make these the platform's functions (create, update, delete as needed); start nothing yet."""

    def ensure(self, specs: list[FunctionSpec]) -> None:
        """Add these functions beside the deployed ones (a request's plan); start nothing yet."""

    def warm(self, names: list[str] | None = None, bounded: bool = False) -> None:
        """Start the named functions' replicas now (all when None) without waiting for them. `bounded`: a
        request's plan asks; the platform may start fewer at once (the local one shares the machine's CPU)."""

    def endpoints(self, name: str, timeout_s: float) -> list[str]:
        """Addresses of the function's replicas, starting cold ones and waiting until they serve."""

    def live_endpoints(self, name: str) -> list[tuple[int, str]]:
        """(replica, address) of the replicas that serve now, without starting or waiting for any."""

    def touch(self, name: str, replica: int) -> None:
        """Note a call to a replica (it stays warm for another idle TTL)."""

    def lease(self) -> AbstractContextManager:
        """Held for the duration of a request: no function scales to zero meanwhile."""

    def running(self) -> list[FunctionSpec]:
        """Functions with an instance serving or starting now (warm ones first): a new plan's experts that one of
        these hosts are sent there instead of to a new function."""

    def status(self) -> list[InstanceStatus]: ...

    def close(self) -> None: ...


def functions_to_json(specs: list[FunctionSpec]) -> dict:
    return {
        "functions": [
            {
                "name": s.name,
                "experts": [list(x) for x in s.experts],
                "memory_mb": s.memory_mb,
                "replicas": s.replicas,
                "concurrency": s.concurrency,
            }
            for s in specs
        ]
    }


def functions_from_json(raw: dict) -> list[FunctionSpec]:
    """Parse a plan's functions; ValueError names what is wrong."""
    try:
        return [
            FunctionSpec(
                name=f["name"],
                experts=tuple((int(layer), int(e)) for layer, e in f["experts"]),
                memory_mb=int(f["memory_mb"]),
                replicas=int(f.get("replicas", 1)),
                concurrency=int(f.get("concurrency", 0)),
            )
            for f in raw["functions"]
        ]
    except (KeyError, TypeError) as e:
        raise ValueError(f"plan: malformed functions entry ({e!r})") from None
