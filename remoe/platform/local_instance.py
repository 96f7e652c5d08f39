"""One replica of a function on the local platform: its process, port and counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from remoe.platform.base import FunctionSpec
from remoe.platform.launcher import InstanceProcess


@dataclass
class LocalInstance:
    spec: FunctionSpec
    replica: int
    process: InstanceProcess | None = None
    port: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    failed_at: float = -1e9  # time.monotonic() of the last failed start
    spawned_at: float = 0.0
    last_used: float = 0.0
    cold_starts: int = 0
    calls: int = 0
    crashes: int = 0

    @property
    def name(self) -> str:
        return f"{self.spec.name}-{self.replica}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def state(self) -> str:
        if not self.running:
            return "cold"
        return "warm" if self.ready.is_set() else "starting"
