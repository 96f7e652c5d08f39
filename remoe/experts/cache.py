"""A byte-budgeted LRU of loaded experts, with counters kept where the events happen.

An expert loaded as a *guest* (for a batch that is another destination's: a function still starting, a service
that failed) is kept only while it is used: one not used for `guest_idle_s` is dropped, so a service that stood
in for a function does not hold its experts for good. A use as the service's own makes it own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

from remoe.constants import GUEST_IDLE_S
from remoe.errors import ExpertBudgetError
from remoe.experts.freed_memory import release_freed_memory

ExpertId = tuple[int, int]  # (layer, expert)
V = TypeVar("V")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    loads: int = 0
    bytes_loaded: int = 0
    evictions: int = 0  # guests released included
    load_seconds: float = 0.0
    guests_released: int = 0  # guest experts dropped after guest_idle_s unused

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    nbytes: int
    guest_until: float = 0.0  # 0: the holder's own; else a guest, dropped once unused past this monotonic time


class ExpertCache(Generic[V]):
    """Holds loaded experts up to `budget_bytes` (None = unbounded); evicts the least recently used, and guests
    unused for `guest_idle_s`."""

    def __init__(
        self,
        load: Callable[[ExpertId], tuple[V, int]],
        budget_bytes: int | None = None,
        guest_idle_s: float = GUEST_IDLE_S,
    ) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        if not guest_idle_s > 0:
            raise ValueError(f"guest_idle_s must be positive, got {guest_idle_s}")
        self._load = load
        self.budget_bytes = budget_bytes
        self.guest_idle_s = guest_idle_s
        self.stats = CacheStats()
        self._entries: OrderedDict[ExpertId, _Entry[V]] = OrderedDict()
        self._guests: set[ExpertId] = set()
        self._resident = 0
        self._lock = threading.Lock()

    @property
    def resident_bytes(self) -> int:
        return self._resident

    def resident(self) -> list[ExpertId]:
        with self._lock:
            return list(self._entries)

    def get(self, expert: ExpertId, guest: bool = False) -> V:
        """The expert's prepared weights, loaded on first use; `guest`: for another destination's batch."""
        with self._lock:
            entry = self._entries.get(expert)
            if entry is not None:
                self._entries.move_to_end(expert)
                self.stats.hits += 1
                if entry.guest_until:  # a guest's use keeps it; the holder's own use makes it own
                    entry.guest_until = time.monotonic() + self.guest_idle_s if guest else 0.0
                    if not guest:
                        self._guests.discard(expert)
                return entry.value
            start = time.perf_counter()
            value, nbytes = self._load(expert)
            self.stats.load_seconds += time.perf_counter() - start
            self.stats.loads += 1
            self.stats.bytes_loaded += nbytes
            self._make_room(expert, nbytes)
            self._entries[expert] = _Entry(value, nbytes, time.monotonic() + self.guest_idle_s if guest else 0.0)
            self._resident += nbytes
            if guest:
                self._guests.add(expert)
        release_freed_memory()  # the load's read buffers and what was evicted; outside the lock: hits go on
        return value

    @property
    def guest_bytes(self) -> int:
        with self._lock:
            return sum(self._entries[e].nbytes for e in self._guests)

    def release_idle_guests(self, now: float | None = None) -> int:
        """Drop the guests unused for guest_idle_s (at monotonic time `now`) and give their memory back; how many."""
        if not self._guests:  # the common case, on every batch: no lock taken
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [e for e in self._guests if self._entries[e].guest_until <= now]
            for expert in idle:
                self._guests.discard(expert)
                self._resident -= self._entries.pop(expert).nbytes
            self.stats.evictions += len(idle)
            self.stats.guests_released += len(idle)
        if idle:
            release_freed_memory()
        return len(idle)

    def _make_room(self, expert: ExpertId, nbytes: int) -> None:
        if self.budget_bytes is None:
            return
        if nbytes > self.budget_bytes:
            raise ExpertBudgetError(
                f"expert {expert} needs {nbytes} bytes, more than the whole budget of {self.budget_bytes} bytes"
            )
        while self._resident + nbytes > self.budget_bytes:
            oldest, evicted = self._entries.popitem(last=False)
            self._guests.discard(oldest)
            self._resident -= evicted.nbytes
            self.stats.evictions += 1

    def clear(self) -> int:
        """Drop every loaded expert now and give its memory back; the number dropped."""
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
            self._guests.clear()
            self._resident = 0
            self.stats.evictions += dropped
        release_freed_memory()
        return dropped

    def evict(self, expert: ExpertId) -> bool:
        """Drop one expert if resident; True when it was."""
        with self._lock:
            entry = self._entries.pop(expert, None)
            if entry is None:
                return False
            self._guests.discard(expert)
            self._resident -= entry.nbytes
            self.stats.evictions += 1
        del entry
        release_freed_memory()
        return True


def release_idle_guests_every(cache: ExpertCache, period_s: float, stop: threading.Event) -> threading.Thread:
    """A daemon thread releasing `cache`'s idle guests every `period_s` until `stop` is set: a service that no
    batch reaches any more gives them back too (batches release them as they pass)."""

    def run() -> None:
        while not stop.wait(period_s):
            cache.release_idle_guests()

    thread = threading.Thread(target=run, name="release-idle-guests", daemon=True)
    thread.start()
    return thread
