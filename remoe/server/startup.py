"""A service's own cold start, in phases: when its process began, when its imports were done (main() entered),
named steps of its initialisation (the backbone: open the weights, load the model), and when it served.

A service calls `begin()` first thing in main() and wraps its slow steps in `step(name)`; `Server.start` writes
the record as JSON beside its ready file (`side_port_file(ready, "startup")`), where `remoe up` reads it to print
where the cluster's cold start went. All times are wall-clock (time.time()), comparable across processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


def process_started_at() -> float | None:
    """Wall-clock time this process was created (from /proc; 10 ms resolution), None where /proc cannot say."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class StartupRecord:
    process_start: float | None  # the process's creation
    main_entered: float  # interpreter start and imports done
    steps: dict[str, float] = field(default_factory=dict)  # seconds per named init step, in order
    serving: float = 0.0  # health SERVING

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> StartupRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


_record: StartupRecord | None = None


def startup_file(ready_file: Path) -> Path:
    """Where a service that writes `ready_file` writes its startup record (just before the ready file)."""
    return ready_file.with_name(f"{ready_file.stem}.startup.json")


def begin() -> StartupRecord:
    """Start this process's record: call first thing in main(), after the module's imports. A record begun
    already (by remoe/services/deferred_start.py, which imported the service earlier) is kept."""
    global _record
    if _record is None:
        _record = StartupRecord(process_started_at(), time.time())
    return _record


def current() -> StartupRecord | None:
    return _record


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time one named init step into this process's record (a no-op when begin() was not called)."""
    start = time.time()
    try:
        yield
    finally:
        if _record is not None:
            _record.steps[name] = _record.steps.get(name, 0.0) + time.time() - start


@dataclass
class ServiceStart:
    """One service's start as its starter saw it, with the service's own record."""

    name: str
    spawned_at: float  # the starter's Popen
    record: StartupRecord | None


def breakdown(starts: list[ServiceStart], launched_at: float) -> list[str]:
    """Lines saying where a cluster's cold start went: per service, seconds after launch when it was spawned and
    served, and between them its process creation, its imports, and each init step (the rest: "other init")."""
    lines = []
    for s in starts:
        r = s.record
        if r is None:
            lines.append(f"{s.name}: spawned at {s.spawned_at - launched_at:.1f} s; no startup record")
            continue
        began = r.process_start if r.process_start is not None else s.spawned_at
        parts = [f"process {max(0.0, began - s.spawned_at):.2f}", f"imports {r.main_entered - began:.2f}"]
        parts += [f"{name} {seconds:.2f}" for name, seconds in r.steps.items()]
        other = r.serving - r.main_entered - sum(r.steps.values())
        parts.append(f"other init {max(0.0, other):.2f}")
        lines.append(
            f"{s.name}: spawned at {s.spawned_at - launched_at:.1f} s, serving at {r.serving - launched_at:.1f} s "
            f"({', '.join(parts)} s)"
        )
    return lines
